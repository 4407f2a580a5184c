"""Synthesis networks and losses (models/gan.py, models/gan_losses.py; docs/synthesis.md#the-method)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.gan import (
    GLU,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Discriminator128,
    GANConfig,
    Generator,
    add_gan_arch_args,
    conditioning_sample,
    count_parameters,
    imagenet_to_pixels,
    to_imagenet,
    to_pixels,
)
from models.gan_losses import (
    KL_WEIGHT,
    class_weights,
    cycle_cos_loss,
    d_class_loss,
    d_real_fake_loss,
    discriminator_loss,
    encode_generated,
    freeze_encoder,
    g_adversarial_loss,
    g_class_loss,
    generator_loss,
    kl_loss,
)

SMALL = GANConfig(z_dim=10, gf_dim=8, df_dim=8, ef_dim=6, r_num=2, emb_dim=32, num_classes=7)


def _small_gd(seed: int = 0, **overrides) -> tuple[Generator, Discriminator128]:
    torch.manual_seed(seed)
    cfg = GANConfig(**{**SMALL.to_dict(), **overrides})
    return Generator(cfg), Discriminator128(cfg)


class ToyEncoder(nn.Module):
    """A tiny stand-in for the FoodSpace image encoder: conv, BN, pool, linear, L2 norm."""

    def __init__(self, out_dim: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, out_dim)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        h = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
        return F.normalize(self.fc(h), dim=1)


# ----------------------------------------------------------------------------- architecture

def test_default_generator_has_the_reference_parameter_count():
    assert count_parameters(Generator()) == 21_080_288


def test_state_dict_keys_follow_the_reference_names():
    g, d = _small_gd()
    g_keys, d_keys = set(g.state_dict()), set(d.state_dict())
    for key in ("ca_net.fc.weight", "ca_net.fc.bias", "h_net1.fc.0.weight", "h_net1.fc.1.running_mean",
                "h_net1.upsample4.1.weight", "h_net1.upsample4.2.bias", "h_net2.jointConv.0.weight",
                "h_net2.residual.1.block.3.weight", "h_net2.residual.1.block.4.weight",
                "h_net2.upsample.1.weight", "img_net2.img.0.weight"):
        assert key in g_keys, key
    assert "h_net1.fc.0.bias" not in g_keys and "img_net2.img.0.bias" not in g_keys  # convs/fc without bias
    assert not any(k.startswith("img_net1") for k in g_keys)
    for key in ("img_code_s16.0.weight", "img_code_s16.3.weight", "img_code_s16.9.running_var",
                "img_code_s32.0.weight", "img_code_s32_1.1.weight", "logits.0.weight", "logits.0.bias",
                "logits_class.0.weight", "jointConv.0.weight", "uncond_branch.0.bias", "semantic_branch.weight"):
        assert key in d_keys, key
    assert "img_code_s16.1.weight" not in d_keys  # no BN after the first D conv


def test_generator_shapes_and_range_at_small_size():
    g, _ = _small_gd()
    emb, z = torch.randn(5, 32), torch.randn(5, 10)
    fake, mu, logvar = g(emb, z)
    assert fake.shape == (5, 3, 128, 128) and mu.shape == (5, 6) and logvar.shape == (5, 6)
    assert fake.abs().max() <= 1.0
    with pytest.raises(ValueError, match="noise"):
        g(emb, torch.randn(5, 11))
    with pytest.raises(ValueError, match="embeddings"):
        g(torch.randn(5, 31), z)


def test_glu_matches_the_reference_slicing():
    x = torch.randn(3, 8, 5, 5)
    assert torch.allclose(GLU()(x), x[:, :4] * torch.sigmoid(x[:, 4:]))


def test_concatenation_order_is_c_then_z_and_c_then_h():
    g, _ = _small_gd()
    g.eval()
    ef = SMALL.ef_dim
    with torch.no_grad():
        # stage 1: zero the fc columns reading z (the last Z_DIM inputs): the output ignores z
        g.h_net1.fc[0].weight[:, ef:] = 0
        c = torch.randn(2, ef)
        a = g.h_net1(torch.randn(2, 10), c)
        b = g.h_net1(torch.randn(2, 10), c)
        assert torch.equal(a, b)
        # stage 2: zero the joint conv's input channels reading c (the first ef): the output ignores c
        g.h_net2.jointConv[0].weight[:, :ef] = 0
        h = torch.randn(2, SMALL.gf_dim, 16, 16)
        assert torch.equal(g.h_net2(h, torch.randn(2, ef)), g.h_net2(h, torch.randn(2, ef)))
        # ... while the c channels do matter with the original weights of a fresh model
        g2, _ = _small_gd(seed=1)
        g2.eval()
        assert not torch.allclose(g2.h_net2(h, torch.randn(2, ef)), g2.h_net2(h, torch.randn(2, ef)))


def test_conditioning_sample_formula_and_generator():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    eps = torch.randn(4, 6)
    assert torch.allclose(conditioning_sample(mu, logvar, eps=eps), mu + torch.exp(logvar / 2) * eps)
    assert torch.equal(conditioning_sample(mu, logvar, eps=torch.zeros(4, 6)), mu)
    a = conditioning_sample(mu, logvar, generator=torch.Generator().manual_seed(3))
    b = conditioning_sample(mu, logvar, generator=torch.Generator().manual_seed(3))
    c = conditioning_sample(mu, logvar, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    expected = mu + torch.exp(logvar / 2) * torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, expected)
    with pytest.raises(ValueError, match="eps"):
        conditioning_sample(mu, logvar, eps=torch.zeros(4, 5))


def test_generation_is_reproducible_with_fixed_seeds():
    g, _ = _small_gd()
    g.eval()
    emb = torch.randn(3, 32)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(3, 10, generator=gen)
        with torch.no_grad():
            return g(emb, z, generator=gen)[0]

    assert torch.equal(run(11), run(11))
    assert not torch.allclose(run(11), run(12))
    # zero noise everywhere: deterministic without any generator
    with torch.no_grad():
        a = g(emb, torch.zeros(3, 10), eps=torch.zeros(3, 6))[0]
        b = g(emb, torch.zeros(3, 10), eps=torch.zeros(3, 6))[0]
    assert torch.equal(a, b)


def test_discriminator_outputs():
    _, d = _small_gd()
    d.eval()
    x = torch.randn(4, 3, 128, 128)
    mu1, mu2 = torch.randn(4, 6), torch.randn(4, 6)
    logit1, cls1 = d(x, mu1)
    logit2, cls2 = d(x, mu2)
    assert logit1.shape == (4,) and cls1.shape == (4, 7)
    assert torch.equal(cls1, cls2)  # the class head is unconditional
    assert not torch.allclose(logit1, logit2)  # the real/fake logit is conditioned on mu
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())  # logits, for BCEWithLogits
    with torch.no_grad():  # brute force: the documented path through the reference's modules
        code = d.img_code_s32_1(d.img_code_s32(d.img_code_s16(x)))  # (4, 8 ndf, 4, 4)
        joined = torch.cat((mu1[:, :, None, None].expand(-1, -1, 4, 4), code), dim=1)
        assert torch.allclose(logit1, d.logits(d.jointConv(joined)).flatten(), atol=1e-5)
        assert torch.allclose(cls1, d.semantic_branch(d.uncond_branch(code).flatten(1)), atol=1e-5)
    logit0, cls0 = d(x, None)
    assert logit0.shape == (4,) and torch.equal(cls0, cls1)
    with pytest.raises(ValueError, match="128"):
        d(torch.randn(4, 3, 64, 64), mu1)
    # logits_class exists (reference state dicts) but is unused: no gradient reaches it
    d.train()
    logit, cls = d(x, mu1)
    (logit.sum() + cls.sum()).backward()
    assert d.logits_class[0].weight.grad is None
    assert d.logits[0].weight.grad is not None and d.semantic_branch.weight.grad is not None


def test_channels_last_gives_the_same_results():
    g, d = _small_gd()
    g.eval()
    d.eval()
    emb, z, eps = torch.randn(2, 32), torch.randn(2, 10), torch.randn(2, 6)
    with torch.no_grad():
        fake, mu, _ = g(emb, z, eps=eps)
        out = d(to_imagenet(fake), mu)
        g_cl, d_cl = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        fake_cl, mu_cl, _ = g_cl(emb, z, eps=eps)
        out_cl = d_cl(to_imagenet(fake_cl), mu_cl)
    assert fake_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fake, fake_cl, atol=1e-5)
    assert torch.allclose(out[0], out_cl[0], atol=1e-4) and torch.allclose(out[1], out_cl[1], atol=1e-4)


def test_output_spaces():
    fake = torch.rand(2, 3, 4, 4) * 2 - 1
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(to_imagenet(fake, "pixel"), ((fake + 1) / 2 - mean) / std)
    assert torch.equal(to_imagenet(fake, "imagenet"), fake)
    assert torch.allclose(to_pixels(fake, "pixel"), (fake + 1) / 2)
    assert torch.allclose(imagenet_to_pixels(to_imagenet(fake, "pixel")), (fake + 1) / 2, atol=1e-6)
    assert torch.allclose(to_pixels(fake, "imagenet"), (fake * std + mean).clamp(0, 1))
    with pytest.raises(ValueError, match="output space"):
        to_imagenet(fake, "rgb")


def test_config_round_trip_and_flags():
    cfg = GANConfig(z_dim=10, gf_dim=8, output_space="pixel")
    assert GANConfig.from_dict(cfg.to_dict()) == cfg
    assert "head64" not in cfg.to_dict()
    with pytest.raises(ValueError, match="unknown GANConfig keys"):
        GANConfig.from_dict({"zdim": 3})
    # checkpoints written before the 64 px head was removed stored head64: False, and still load
    assert GANConfig.from_dict({**cfg.to_dict(), "head64": False}) == cfg
    for stored in (True, 1, "no"):
        with pytest.raises(ValueError, match="head64"):
            GANConfig.from_dict({**cfg.to_dict(), "head64": stored})
    with pytest.raises(ValueError, match="unknown GANConfig keys"):
        GANConfig.from_dict({"head64": False, "zdim": 3})
    with pytest.raises(ValueError, match="gf_dim"):
        GANConfig(gf_dim=7)
    with pytest.raises(ValueError, match="output_space"):
        GANConfig(output_space="rgb")
    parser = add_gan_arch_args(argparse.ArgumentParser())
    assert GANConfig.from_args(parser.parse_args([])) == GANConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--G_head64"])
    args = parser.parse_args(["--Z_DIM", "10", "--GF_DIM", "8", "--DF_DIM", "8", "--EMBEDDING_DIM", "6",
                              "--R_NUM", "2", "--embDim", "32", "--numClasses", "7"])
    assert GANConfig.from_args(args) == SMALL


# ----------------------------------------------------------------------------- losses

def _bce_logit(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_losses_against_hand_computation():
    real, fake = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, -3.0, 4.0])
    expected_d = sum(_bce_logit(v, 1) for v in real.tolist()) / 3 + sum(_bce_logit(v, 0) for v in fake.tolist()) / 3
    assert d_real_fake_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert d_real_fake_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    expected_g = sum(_bce_logit(v, 1) for v in fake.tolist()) / 3
    assert g_adversarial_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)


def test_kl_loss_closed_form():
    mu, logvar = torch.randn(5, 6), torch.randn(5, 6)
    expected = -0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in zip(mu.flatten().tolist(),
                                                                          logvar.flatten().tolist())) / 30
    assert kl_loss(mu, logvar).item() == pytest.approx(expected, rel=1e-5)
    # it is the element-wise KL(N(mu, exp(logvar)) || N(0, 1)) averaged
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, torch.exp(logvar / 2)),
                                           torch.distributions.Normal(0.0, 1.0)).mean()
    assert kl_loss(mu, logvar).item() == pytest.approx(kl.item(), rel=1e-5)
    assert kl_loss(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_class_losses_ignore_the_background_class():
    w = class_weights(5)
    assert w.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 2, 0, 4])
    logp = torch.log_softmax(logits, dim=1)
    expected = -(logp[1, 2] + logp[3, 4]).item() / 2  # the two background rows count for nothing
    assert g_class_loss(logits, labels, w).item() == pytest.approx(expected, rel=1e-5)
    assert g_class_loss(logits, labels, w).item() == pytest.approx(
        nn.CrossEntropyLoss(weight=w)(logits, labels).item(), rel=1e-6)
    changed = logits.clone()
    changed[0] += 10 * torch.randn(5)
    assert g_class_loss(changed, labels, w).item() == pytest.approx(expected, rel=1e-5)
    fake_logits = torch.randn(4, 5)
    assert d_class_loss(logits, fake_logits, labels, w).item() == pytest.approx(
        expected + g_class_loss(fake_logits, labels, w).item(), rel=1e-5)
    # a batch of background-only recipes gives 0, not the NaN of nn.CrossEntropyLoss
    zero = d_class_loss(logits.requires_grad_(), fake_logits, torch.zeros(4, dtype=torch.long), w)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(logits.grad).all()


def test_cycle_cos_loss_values():
    v = torch.randn(3, 8)
    assert cycle_cos_loss(v, v).item() == pytest.approx(0.0, abs=1e-6)
    assert cycle_cos_loss(v, -v).item() == pytest.approx(2.0, abs=1e-6)
    assert cycle_cos_loss(v, 5 * v).item() == pytest.approx(0.0, abs=1e-6)
    e = torch.eye(4)
    assert cycle_cos_loss(e[:2], e[2:]).item() == pytest.approx(1.0, abs=1e-6)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    assert cycle_cos_loss(a, b).item() == pytest.approx(
        nn.CosineEmbeddingLoss(0.3)(a, b, torch.ones(6)).item(), rel=1e-5)  # the reference's loss
    with pytest.raises(ValueError, match="shape"):
        cycle_cos_loss(a, b[:5])


def test_combined_losses_sum_their_terms():
    logits, cls = torch.randn(4), torch.randn(4, 7)
    labels, w = torch.tensor([1, 0, 3, 6]), class_weights(7)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    gen, img, rec = torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 32)
    out = generator_loss((logits, cls), labels, w, mu, logvar, gen_emb=gen, img_emb=img, rec_emb=rec,
                         w_img_img=32, w_img_rec=3)
    expected = (g_adversarial_loss(logits) + g_class_loss(cls, labels, w) + KL_WEIGHT * kl_loss(mu, logvar)
                + 32 * cycle_cos_loss(gen, img) + 3 * cycle_cos_loss(gen, rec))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    off = generator_loss((logits, cls), labels, w, mu, logvar, w_img_img=0, w_img_rec=0)
    assert off.img_img is None and off.img_rec is None
    assert off.loss.item() == pytest.approx((out.adversarial + out.cls + 2 * out.kl).item(), rel=1e-5)
    with pytest.raises(ValueError, match="img_rec"):
        generator_loss((logits, cls), labels, w, mu, logvar, gen_emb=gen, img_emb=img, w_img_rec=1)
    real = (torch.randn(4), torch.randn(4, 7))
    d = discriminator_loss(real, (logits, cls), labels, w)
    assert d.loss.item() == pytest.approx(
        (d_real_fake_loss(real[0], logits) + d_class_loss(real[1], cls, labels, w)).item(), rel=1e-5)


# ----------------------------------------------------------------------------- the frozen encoder

def test_encode_generated_maps_upsamples_and_needs_a_frozen_encoder():
    enc = ToyEncoder()
    fake = torch.rand(2, 3, 128, 128) * 2 - 1
    with pytest.raises(ValueError, match="freeze_encoder"):
        encode_generated(enc, fake)
    freeze_encoder(enc)
    out = encode_generated(enc, fake, space="pixel")
    assert out.shape == (2, 32)
    expected_in = F.interpolate(to_imagenet(fake, "pixel"), size=(224, 224), mode="bilinear", align_corners=True)
    assert torch.allclose(enc.seen[-1], expected_in, atol=1e-5)
    # mapping then upsampling equals upsampling then mapping (the mapping is per-channel affine)
    up_then_map = to_imagenet(F.interpolate(fake, size=(224, 224), mode="bilinear", align_corners=True), "pixel")
    assert torch.allclose(enc.seen[-1], up_then_map, atol=1e-5)
    encode_generated(enc, fake)  # the default space is the reference's: G's output as it is
    assert torch.allclose(enc.seen[-1], F.interpolate(fake, size=(224, 224), mode="bilinear",
                                                       align_corners=True), atol=1e-6)


def test_cycle_gradients_reach_g_but_not_the_frozen_encoder():
    g, _ = _small_gd()
    enc = freeze_encoder(ToyEncoder())
    enc_before = {k: v.clone() for k, v in enc.state_dict().items()}
    g_before = {k: v.clone() for k, v in g.named_parameters()}
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    emb, z = torch.randn(4, 32), torch.randn(4, 10)
    fake, _, _ = g(emb, z)
    loss = cycle_cos_loss(encode_generated(enc, fake), torch.randn(4, 32))
    loss.backward()
    assert all(p.grad is None for p in enc.parameters())
    grads = {k: p.grad for k, p in g.named_parameters()}
    assert grads["h_net1.fc.0.weight"] is not None and grads["h_net1.fc.0.weight"].abs().sum() > 0
    assert grads["ca_net.fc.weight"].abs().sum() > 0 and grads["img_net2.img.0.weight"].abs().sum() > 0
    opt.step()
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc_before.items())  # BN stats included
    assert not torch.equal(g_before["img_net2.img.0.weight"], g.img_net2.img[0].weight)


def test_one_gan_step_updates_g_and_d():
    g, d = _small_gd()
    enc = freeze_encoder(ToyEncoder())
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999))
    w = class_weights(7)
    rec, img, real = torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 3, 128, 128)
    labels = torch.tensor([0, 1, 2, 3])
    g0, d0 = g.h_net1.fc[0].weight.clone(), d.semantic_branch.weight.clone()
    fake, mu, logvar = g(rec, torch.randn(4, 10))
    ld = discriminator_loss(d(real, mu.detach()), d(g.to_imagenet(fake).detach(), mu.detach()), labels, w)
    opt_d.zero_grad()
    ld.loss.backward()
    opt_d.step()
    assert g.h_net1.fc[0].weight.grad is None  # the D step does not reach G
    lg = generator_loss(d(g.to_imagenet(fake), mu), labels, w, mu, logvar,
                        gen_emb=encode_generated(enc, fake, g.cfg.output_space), img_emb=img, rec_emb=rec)
    opt_g.zero_grad()
    lg.loss.backward()
    opt_g.step()
    assert torch.isfinite(ld.loss) and torch.isfinite(lg.loss)
    assert not torch.equal(g0, g.h_net1.fc[0].weight) and not torch.equal(d0, d.semantic_branch.weight)


def test_bench_gan_step_quick_runs(tmp_path):
    from bench.gan_step import main

    out = main(["--quick", "--warmup", "0", "--steps", "1", "--json", str(tmp_path / "b.json")])
    assert set(out["paths"]) == {"reference", "ours"}
    for row in out["paths"].values():
        assert row["median_step_s"] > 0 and set(row["phases_median_s"]) == {"G forward", "D step", "G step"}
    assert out["speedup"] > 0 and (tmp_path / "b.json").is_file()
    with pytest.raises(SystemExit, match="--variants"):
        main(["--quick", "--variants", "cl,cl"])


def test_emb_scale_multiplies_the_input_and_defaults_to_the_reference():
    from models.gan import emb_scale_value

    assert GANConfig().emb_scale == 1.0
    assert emb_scale_value("sqrt", 128) == pytest.approx(128 ** 0.5) and emb_scale_value("2.5", 8) == 2.5
    assert emb_scale_value("2*sqrt", 128) == pytest.approx(2 * 128 ** 0.5) == emb_scale_value("2 * SQRT", 128)
    for bad in ("0", "-1", "big", "0*sqrt", "x*sqrt"):
        with pytest.raises(ValueError, match="G_emb_scale"):
            emb_scale_value(bad, 8)
    with pytest.raises(ValueError, match="emb_scale"):
        GANConfig(emb_scale=0.0)
    scaled, plain = _small_gd(emb_scale=4.0)[0].eval(), _small_gd()[0].eval()
    assert GANConfig.from_dict(scaled.cfg.to_dict()) == scaled.cfg
    emb, z, eps = torch.randn(3, 32), torch.randn(3, 10), torch.randn(3, 6)
    with torch.no_grad():
        a, mu_a, _ = scaled(emb, z, eps=eps)
        b, mu_b, _ = plain(emb * 4.0, z, eps=eps)
    assert torch.equal(mu_a, mu_b) and torch.equal(a, b)
