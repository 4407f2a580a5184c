"""The faster options the training scripts adopted change nothing, bit for bit; the benchmarks run.

train.py's ``build_optimizer`` asks for ``foreach`` Adam and GAN_train.py's ``gan_step`` freezes D's
weights during G's update (bench/train_step.py and bench/gan_step.py time them). Each test runs the
script's own step beside the unoptimised path on tiny networks, from the same weights, batches and
random draws, and requires the same losses, the same gradients and the same weights, exactly.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import GAN_train
import train
from models.foodspace import ArchConfig, FoodSpaceNet, ImageEmbedder
from models.gan import Discriminator128, GANConfig, Generator
from models.gan_losses import class_weights, freeze_encoder

TINY_ARCH = ArchConfig(image_backbone="resnet18", emb_dim=32, bert_layers=1, bert_heads=2, bert_hidden=32,
                       bert_intermediate=64, vocab_size=500, max_len=40)
TINY_GAN = GANConfig(z_dim=10, gf_dim=8, df_dim=8, ef_dim=6, r_num=1, emb_dim=32, num_classes=7)


def loop_adam_like(opt: torch.optim.Adam) -> torch.optim.Adam:
    """The same groups and hyperparameters with Adam's single-tensor loop (PyTorch's CPU default)."""
    return torch.optim.Adam([{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in opt.param_groups],
                            foreach=False)


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- train.py


@pytest.mark.parametrize("weight_decay, w2v_train", [(0.0, True), (1e-3, False)])
def test_train_step_with_foreach_adam_is_the_loop_bit_for_bit(weight_decay, w2v_train):
    torch.manual_seed(0)
    base = FoodSpaceNet(TINY_ARCH).to(memory_format=torch.channels_last)  # train.py's default layout
    runs = {}
    # The first steps of the suite's first test once summed in another order (the loss at step 0, before
    # any optimiser step, differed in its 6th digit in one CI run): a discarded warm-up run first, so
    # that the two compared paths both run in the process's steady state.
    for kind in ("warm-up", "script", "loop"):
        model = copy.deepcopy(base).train()
        opt = train.build_optimizer(model, lr=1e-3, weight_decay=weight_decay, w2v_train=w2v_train)
        if kind == "loop":
            opt = loop_adam_like(opt)
        else:
            assert all(g["foreach"] for g in opt.param_groups)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        gen = torch.Generator().manual_seed(1)
        losses, step_grads = [], []
        for step in range(3):
            images = torch.randn(4, 3, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
            tokens = torch.randint(5, TINY_ARCH.vocab_size, (4, 24), generator=gen)
            tokens[1:, 15:] = 0
            torch.manual_seed(100 + step)  # the same dropout masks on both paths
            out = train.train_step(model, opt, scaler, images, tokens, ctx=nullcontext(), alpha=0.3, intra_modal=True,
                                   ohem=True)
            losses.append((out.loss.item(), out.d_pos.item(), out.d_neg.item()))
            step_grads.append(grads(model))
        runs[kind] = model, losses, step_grads
    (m_script, l_script, g_script), (m_loop, l_loop, g_loop) = runs["script"], runs["loop"]
    assert l_script == l_loop
    for a, b in zip(g_script, g_loop):
        assert_same(a, b)
    assert_same_state(m_script, m_loop)
    assert not all(torch.equal(a, b) for a, b in zip(m_script.state_dict().values(), base.state_dict().values()))


# --------------------------------------------------------------------------- GAN_train.py


def _gan_nets(G, D, E, *, unoptimised: bool) -> GAN_train.Nets:
    """GAN_train's Nets; ``unoptimised``: Adam's loop, and D's weights left trainable during G's update."""
    opt_G, opt_D = GAN_train.build_optimizers(G, D, lr=1e-3, weight_decay=0.0)
    assert all(g["foreach"] for opt in (opt_G, opt_D) for g in opt.param_groups)
    if unoptimised:
        opt_G, opt_D = loop_adam_like(opt_G), loop_adam_like(opt_D)
        trained = [p for p in D.parameters() if p.requires_grad]

        def unfreeze(_module, _inputs):  # D's third forward of a step is G's update: undo any freezing
            for p in trained:
                p.requires_grad_(True)

        D.register_forward_pre_hook(unfreeze)
    scaler = lambda: torch.amp.GradScaler("cpu", enabled=False)  # noqa: E731
    return GAN_train.Nets(G, D, E, opt_G, opt_D, scaler(), scaler())


def test_gan_step_with_d_frozen_in_g_update_and_foreach_adam_is_the_unoptimised_step_bit_for_bit():
    torch.manual_seed(0)
    G0, D0 = Generator(TINY_GAN), Discriminator128(TINY_GAN)
    D0.logits_class.requires_grad_(False)  # as GAN_train.py's main
    E0 = freeze_encoder(ImageEmbedder(ArchConfig(image_backbone="resnet18", emb_dim=TINY_GAN.emb_dim), "none"))
    weight = class_weights(TINY_GAN.num_classes)
    runs = {}
    for kind in ("script", "unoptimised"):
        G, D, E = copy.deepcopy(G0), copy.deepcopy(D0), copy.deepcopy(E0)
        nets = _gan_nets(G, D, E, unoptimised=kind == "unoptimised")
        gen = torch.Generator().manual_seed(5)
        terms, g_grads, d_grads = [], [], []
        for step in range(3):
            real = torch.randn(3, 3, 128, 128, generator=gen)
            rec = F.normalize(torch.randn(3, TINY_GAN.emb_dim, generator=gen), dim=1)
            img = F.normalize(torch.randn(3, TINY_GAN.emb_dim, generator=gen), dim=1)
            labels = torch.randint(0, TINY_GAN.num_classes, (3,), generator=gen)
            torch.manual_seed(100 + step)  # G's noise is drawn inside the step
            terms.append(GAN_train.gan_step(nets, TINY_GAN, real, rec, img, labels, weight, w_img_img=32.0,
                                            w_img_rec=32.0, ctx=nullcontext()))
            g_grads.append(grads(G))
            d_grads.append(grads(D))
        # the step leaves D's trainability as it found it (logits_class stays frozen)
        assert [p.requires_grad for p in D.parameters()] == [p.requires_grad for p in D0.parameters()]
        runs[kind] = G, D, terms, g_grads, d_grads
    G_s, D_s, terms_s, g_s, d_s = runs["script"]
    G_u, D_u, terms_u, g_u, d_u = runs["unoptimised"]
    assert terms_s == terms_u  # every loss term and D accuracy, as floats
    for a, b in zip(g_s, g_u):
        assert_same(a, b)
    assert_same_state(G_s, G_u)
    assert_same_state(D_s, D_u)
    # not vacuous: the unoptimised path did compute D's weight gradients in G's update (they sit on
    # D's .grad until the next D step discards them); the script's path left D's own gradients alone
    assert any(a is not None and not torch.equal(a, b) for a, b in zip(d_s[-1], d_u[-1]))


# --------------------------------------------------------------------------- the benchmarks


def test_run_all_smoke_runs_every_benchmark_and_prints_the_table(capsys):
    from bench import run_all

    rows = run_all.main(["--smoke"])
    names = [row[0] for row in rows]
    assert len(names) == len(set(names)) >= 8
    table = capsys.readouterr().out
    assert "| work | this project | reference's way | ratio |" in table
    for name in names:
        assert f"| {name} |" in table


def test_bench_variants_are_checked_bit_for_bit():
    from bench import gan_step, train_step

    res = train_step.main(["--quick", "--threads", "1", "--lengths", "normal", "--length_samples", "20",
                           "--variants", "all"])
    assert res["paths"]["ours, loop Adam"]["same_weights_as_ours"] is True
    assert res["paths"]["ours, fused Adam"]["same_weights_as_ours"] is False
    assert res["paths"]["ours"]["median_adam_s"] > 0
    res = gan_step.main(["--quick", "--threads", "1", "--warmup", "0", "--variants", "loop_adam,d_trainable"])
    assert res["paths"]["ours, loop Adam"]["same_weights_as_ours"] is True
    assert res["paths"]["ours, D trainable"]["same_weights_as_ours"] is True
    with pytest.raises(SystemExit, match="unknown"):
        gan_step.main(["--quick", "--variants", "turbo"])
