"""The batch-hard triplet loss against a brute-force loop implementation (docs/model.md)."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import batch_hard_triplet


def _cos_dist(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return 1.0 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def brute_force(img, rec, *, alpha, intra_modal, ohem):
    """The loss written as docs/model.md states it, one anchor and one candidate at a time."""
    img, rec = img.double().tolist(), rec.double().tolist()
    b = len(img)
    # items: (modality, index, vector)
    items = [("img", i, img[i]) for i in range(b)]
    if intra_modal:
        items += [("rec", i, rec[i]) for i in range(b)]
    candidates = items if intra_modal else [("rec", i, rec[i]) for i in range(b)]
    losses, pos, neg = [], [], []
    for mod, i, vec in items:
        pair = rec[i] if mod == "img" else img[i]
        d_pos = _cos_dist(vec, pair)
        negs = [_cos_dist(vec, cvec) for cmod, j, cvec in candidates if j != i]  # same index = itself or its pair
        if not negs:
            continue
        d_neg = min(negs) if ohem else sum(negs) / len(negs)
        losses.append(max(0.0, d_pos - d_neg + alpha))
        pos.append(d_pos)
        neg.append(d_neg)
    if not losses:
        return 0.0, 0.0, 0.0
    return sum(losses) / len(losses), sum(pos) / len(pos), sum(neg) / len(neg)


@pytest.mark.parametrize("intra_modal", [True, False])
@pytest.mark.parametrize("ohem", [True, False])
def test_matches_brute_force(intra_modal, ohem):
    gen = torch.Generator().manual_seed(7 + 2 * intra_modal + ohem)
    b, d = 9, 6
    img = torch.randn(b, d, generator=gen)
    rec = img + 0.8 * torch.randn(b, d, generator=gen)  # correlated pairs: some margins active, some not
    losses = []
    for alpha in (0.3, 0.05, 1.0):
        out = batch_hard_triplet(img, rec, alpha=alpha, intra_modal=intra_modal, ohem=ohem)
        ref = brute_force(img, rec, alpha=alpha, intra_modal=intra_modal, ohem=ohem)
        got = (out.loss.item(), out.d_pos.item(), out.d_neg.item())
        assert got == pytest.approx(ref, abs=1e-5)
        losses.append(ref[0])
    assert max(losses) > 0  # the test exercises active margins


def test_ohem_picks_the_hardest_negative():
    e1, e2, e3 = torch.eye(3)
    img = torch.stack([e1, e2, e3])
    rec = torch.stack([e2, e1, e3])  # pairs 0 and 1 swapped: each image's hardest negative is at distance 0
    hard = batch_hard_triplet(img, rec, intra_modal=False, ohem=True, alpha=0.3)
    mean = batch_hard_triplet(img, rec, intra_modal=False, ohem=False, alpha=0.3)
    # anchors 0, 1: d_pos 1, negatives at 0 and 1; anchor 2: d_pos 0, negatives at 1 and 1
    assert hard.loss.item() == pytest.approx((1.3 + 1.3 + 0.0) / 3)
    assert hard.d_neg.item() == pytest.approx((0 + 0 + 1) / 3)
    assert mean.loss.item() == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    assert mean.d_neg.item() == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert hard.d_pos.item() == pytest.approx(2 / 3)


def test_perfect_embeddings_have_zero_loss():
    img = torch.eye(4)
    out = batch_hard_triplet(img, img.clone(), alpha=0.3)
    assert out.loss.item() == 0.0
    assert out.d_pos.item() == pytest.approx(0.0, abs=1e-6)
    assert out.d_neg.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("intra_modal", [True, False])
@pytest.mark.parametrize("ohem", [True, False])
def test_gradients_flow_and_are_finite(intra_modal, ohem):
    gen = torch.Generator().manual_seed(11)
    img = torch.randn(5, 8, generator=gen, requires_grad=True)
    rec = torch.randn(5, 8, generator=gen, requires_grad=True)
    out = batch_hard_triplet(img, rec, alpha=0.5, intra_modal=intra_modal, ohem=ohem)
    out.loss.backward()
    for grad in (img.grad, rec.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert img.grad.abs().sum() > 0 and rec.grad.abs().sum() > 0
    assert not out.d_pos.requires_grad and not out.d_neg.requires_grad


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(5)
    img = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    rec = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: batch_hard_triplet(a, b, alpha=1.0, intra_modal=True, ohem=False).loss, (img, rec))


def test_degenerate_batches():
    one = torch.randn(1, 4, requires_grad=True)
    out = batch_hard_triplet(one, one * 2, intra_modal=True)
    assert out.loss.item() == 0.0  # no negatives: no anchor
    out.loss.backward()  # still attached to the graph
    with pytest.raises(ValueError, match="shape"):
        batch_hard_triplet(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match="valid"):  # the padding mask is gone: gathers cut their padding
        batch_hard_triplet(torch.randn(3, 4), torch.randn(3, 4), valid=torch.ones(3, dtype=torch.bool))
