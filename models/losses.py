"""Batch-hard triplet loss on cosine distance (docs/model.md).

With ``intra_modal`` (the reference's ``intraModalLoss``) the B image and B recipe embeddings are
pooled into 2B items: each item is an anchor whose positive is its pair (the other modality, same
index) and whose negatives are the other 2B - 2 items of both modalities. Without it, only image
anchors are used, against the B recipes. With ``ohem`` the negative distance of an anchor is its
hardest (smallest) one, otherwise the mean over its negatives. The loss is the mean over anchors
of ``relu(d_pos - d_neg + alpha)``, with distance ``1 - cos``.

Under DDP the caller gathers every rank's embeddings (keeping gradients for the local part, see
``utils/distributed.py``) so negatives come from the global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TripletOutput(NamedTuple):
    """The loss (a scalar with gradients) and, for logging, the detached mean distances."""

    loss: torch.Tensor  # ()
    d_pos: torch.Tensor  # () mean over anchors of the positive distance
    d_neg: torch.Tensor  # () mean over anchors of the hardest (ohem) or mean negative distance


_FAR = 4.0  # larger than any cosine distance (<= 2): fills non-negatives before taking the minimum


def batch_hard_triplet(img_emb: torch.Tensor, rec_emb: torch.Tensor, *, alpha: float = 0.3,
                       intra_modal: bool = True, ohem: bool = True) -> TripletOutput:
    """Batch-hard triplet loss between paired image and recipe embeddings.

    Args:
        img_emb: ``(B, D)`` image embeddings (normalised here again; the model's already are).
        rec_emb: ``(B, D)`` recipe embeddings, row i paired with ``img_emb[i]``.
        alpha: the margin.
        intra_modal: pool both modalities (anchors and negatives from all 2B items).
        ohem: hardest negative per anchor instead of the mean over negatives.

    Returns:
        :class:`TripletOutput`. Anchors without any negative (a batch of one) are left out; with no
        anchor left the loss is 0 (still attached to the graph).
    """
    if img_emb.dim() != 2 or img_emb.shape != rec_emb.shape:
        raise ValueError(f"expected two (B, D) tensors of one shape, got {tuple(img_emb.shape)} "
                         f"and {tuple(rec_emb.shape)}")
    b = img_emb.shape[0]
    device = img_emb.device
    img = F.normalize(img_emb, dim=1)  # (B, D)
    rec = F.normalize(rec_emb, dim=1)  # (B, D)

    if intra_modal:
        anchors = torch.cat([img, rec])  # (2B, D)
        candidates = anchors  # (2B, D)
        n = 2 * b
        pos_idx = (torch.arange(n, device=device) + b) % n  # (2B,) item i <-> its pair
    else:
        anchors, candidates, n = img, rec, b
        pos_idx = torch.arange(n, device=device)  # (B,)
    rows = torch.arange(n, device=device)
    neg_mask = torch.ones(n, n, dtype=torch.bool, device=device)  # (N, N) every candidate...
    neg_mask[rows, rows] = False  # ...except the anchor itself (intra) / its own recipe (cross)
    neg_mask[rows, pos_idx] = False  # ...and its pair

    dist = 1.0 - anchors @ candidates.T  # (N, N) cosine distances
    d_pos = dist[rows, pos_idx]  # (N,)
    n_neg = neg_mask.sum(dim=1)  # (N,)
    if ohem:
        d_neg = dist.masked_fill(~neg_mask, _FAR).min(dim=1).values  # (N,)
    else:
        d_neg = (dist * neg_mask).sum(dim=1) / n_neg.clamp(min=1)  # (N,)

    use = n_neg > 0  # (N,)
    count = use.sum().clamp(min=1)
    per_anchor = torch.where(use, F.relu(d_pos - d_neg + alpha), torch.zeros_like(d_pos))  # (N,)
    loss = per_anchor.sum() / count
    with torch.no_grad():
        mean_pos = torch.where(use, d_pos, torch.zeros_like(d_pos)).sum() / count
        mean_neg = torch.where(use, d_neg, torch.zeros_like(d_neg)).sum() / count
    return TripletOutput(loss, mean_pos, mean_neg)
