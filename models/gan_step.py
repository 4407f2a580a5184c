"""One GAN training step (docs/synthesis.md#one-training-step): G forward, D update, G update.

``gan_step`` on ``Nets`` (G, D, the frozen FoodSpace image encoder, their optimisers and scalers,
from ``build_optimizers``); ``d_view`` is what D sees of an image (``--D_aug``, ``--D_noise``) and
``probe_output_grads`` how hard each G loss term pulls on G's output (``--probe_every``).
GAN_train.py runs it; bench/gan_step.py times it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch

from models.gan import GANConfig, to_imagenet
from models.gan_augment import instance_noise, random_view_imagenet
from models.gan_losses import (
    KL_WEIGHT,
    cycle_cos_loss,
    discriminator_loss,
    encode_generated,
    g_adversarial_loss,
    g_class_loss,
    generator_loss,
    layout_loss,
    whiten,
)


class Nets(NamedTuple):
    G: torch.nn.Module  # the generator, or its DDP wrapper
    D: torch.nn.Module  # the discriminator, or its DDP wrapper
    encoder: torch.nn.Module  # frozen
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler


def gan_step(nets: Nets, cfg: GANConfig, real, rec_emb, img_emb, labels, weight, *, w_img_img: float,
             w_img_rec: float, ctx, probe: bool = False, cycle_aug: tuple[str, ...] = (),
             d_aug: tuple[str, ...] = (), d_noise: float = 0.0, w_layout: float = 0.0, layout_size: int = 16,
             as_tensors: bool = False, cycle_both: bool = False,
             cycle_space: tuple[torch.Tensor, torch.Tensor] | None = None, w_kl: float = KL_WEIGHT) -> dict:
    """One step: G forward, D update, G update against the updated D (docs/synthesis.md).

    Args:
        real: (B, 3, 128, 128) ImageNet-normalised real images; rec_emb, img_emb: (B, D); labels: (B,).
        weight: (numClasses,) class weights (0 for background).
        probe: also measure how hard each G loss term pulls on G's output: the norm of its
            gradient with respect to the generated images, per image (``G/grad/<term>``).
        cycle_aug: the encoder of the cycle terms sees a random view per sample of G's images
            (:mod:`models.gan_augment`; () as the reference: the images themselves).
        d_aug, d_noise: D sees random views of real and generated images, plus Gaussian noise of
            this standard deviation (ImageNet units) ((), 0: the images themselves).
        w_layout, layout_size: weight and side of :func:`layout_loss` against ``real`` (0: off).
        cycle_both: with ``cycle_aug``, the cycle terms are averaged over G's image and its view.
        cycle_space: ``(mean, W)`` of :func:`whitening`: the cycle terms' cosines are taken between
            whitened embeddings (None: as they are, the reference).
        w_kl: weight of G's KL term (``KL_WEIGHT``, 2: the reference).

    Returns:
        Every loss term as a float (``G/cycle_*`` only when its weight is > 0), D's accuracy on real
        and on generated images (``D/acc_real``, ``D/acc_fake``: the fraction on the right side of
        the decision threshold), and with ``probe`` the gradient norms. With ``as_tensors`` they stay
        0-dim tensors on the device (no host synchronisation; the loop reads them every --log_every).
    """
    G, D = nets.G, nets.D
    z = torch.randn(rec_emb.shape[0], cfg.z_dim, device=rec_emb.device)  # (B, Z) from the global RNG
    with ctx:
        fake, mu, logvar = G(rec_emb, z)  # (B, 3, 128, 128), (B, E), (B, E)
        fake_in = to_imagenet(fake, cfg.output_space)  # what D sees, like the real images
        real_out = D(d_view(real, d_aug, d_noise), mu.detach())
        fake_out = D(d_view(fake_in.detach(), d_aug, d_noise), mu.detach())
    d = discriminator_loss(real_out, fake_out, labels, weight)
    nets.opt_D.zero_grad(set_to_none=True)
    nets.scaler_D.scale(d.loss).backward()
    nets.scaler_D.step(nets.opt_D)
    nets.scaler_D.update()

    # G against the updated D. D's weight gradients from this pass would only be discarded by the next
    # D step's zero_grad, so D's trained weights are frozen for it: backward computes just the gradient
    # to D's input, G's gradients are the same bit for bit (tests/test_bench_paths.py), and the G
    # update does less work (timed in bench/README.md). Under DDP the pass also runs outside D's
    # gradient sync (no_sync), so no rank waits for D gradients that are not computed.
    trained_D = [q for q in D.parameters() if q.requires_grad]
    for q in trained_D:
        q.requires_grad_(False)
    try:
        sync_off = D.no_sync() if isinstance(D, torch.nn.parallel.DistributedDataParallel) else nullcontext()
        with ctx, sync_off:
            out = D(d_view(fake_in, d_aug, d_noise), mu)
            gen_emb = None
            if (w_img_img > 0 or w_img_rec > 0) and cycle_aug:
                view = random_view_imagenet(fake_in, cycle_aug)
                if cycle_both:  # the image and its view in one pass: the mean over 2B is the two terms' mean
                    view = torch.cat([fake_in, view])  # (2B, 3, 128, 128)
                    img_emb, rec_emb = img_emb.repeat(2, 1), rec_emb.repeat(2, 1)
                gen_emb = encode_generated(nets.encoder, view, "imagenet")
            elif w_img_img > 0 or w_img_rec > 0:
                gen_emb = encode_generated(nets.encoder, fake, cfg.output_space)  # (B, D)
        if cycle_space is not None and gen_emb is not None:  # compare where recipes differ (--cycle_whiten)
            gen_emb, img_emb, rec_emb = (whiten(e, cycle_space) for e in (gen_emb, img_emb, rec_emb))
        g = generator_loss(out, labels, weight, mu, logvar, gen_emb=gen_emb, img_emb=img_emb, rec_emb=rec_emb,
                           w_img_img=w_img_img, w_img_rec=w_img_rec, w_kl=w_kl)
        layout = layout_loss(fake_in, real, layout_size) if w_layout > 0 else None
        loss_G = g.loss + w_layout * layout if layout is not None else g.loss
        grads = probe_output_grads(fake, out, labels, weight, gen_emb, img_emb, rec_emb, w_img_img, w_img_rec,
                                   layout=w_layout * layout if layout is not None else None) if probe else {}
        nets.opt_G.zero_grad(set_to_none=True)
        nets.scaler_G.scale(loss_G).backward()
        nets.scaler_G.step(nets.opt_G)
        nets.scaler_G.update()
    finally:
        for q in trained_D:
            q.requires_grad_(True)
    terms = {"D/loss": d.loss.detach(), "D/real_fake": d.real_fake, "D/class": d.cls, "G/loss": loss_G.detach(),
             "G/adversarial": g.adversarial, "G/class": g.cls, "G/kl": g.kl,
             "D/acc_real": (real_out[0].detach() > 0).float().mean(),  # logits: real when > 0
             "D/acc_fake": (fake_out[0].detach() < 0).float().mean(), **grads}
    if g.img_img is not None:
        terms["G/cycle_img_img"] = g.img_img
    if g.img_rec is not None:
        terms["G/cycle_img_rec"] = g.img_rec
    if layout is not None:
        terms["G/layout"] = layout.detach()
    if as_tensors:
        return {k: v.detach() for k, v in terms.items()}
    return {k: float(v) for k, v in terms.items()}


def d_view(images: torch.Tensor, ops: tuple[str, ...], noise: float) -> torch.Tensor:
    """What D sees of ImageNet-normalised ``images``: a random view (``--D_aug``) plus noise (``--D_noise``)."""
    return instance_noise(random_view_imagenet(images, ops), noise)


def build_optimizers(G: torch.nn.Module, D: torch.nn.Module, lr: float, weight_decay: float):
    """The reference's Adam (betas 0.5, 0.999) for G and for D's trained parameters.

    ``foreach=True`` (PyTorch's default on GPUs, the per-tensor loop being its CPU default): the same
    arithmetic bit for bit (tests/test_bench_paths.py), with one temporary fewer per tensor.
    """
    opt_G = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay, foreach=True)
    opt_D = torch.optim.Adam([q for q in D.parameters() if q.requires_grad], lr=lr, betas=(0.5, 0.999),
                             weight_decay=weight_decay, foreach=True)
    return opt_G, opt_D


def probe_output_grads(fake, out, labels, weight, gen_emb, img_emb, rec_emb, w_img_img, w_img_rec,
                       layout: torch.Tensor | None = None) -> dict:
    """Norm of each weighted G loss term's gradient at G's output, per image (a diagnostic).

    The terms are rebuilt from the same graph (cheap: they are functions of D's outputs and the
    encoder's embeddings), so the step itself is unchanged; only extra backward passes are paid.
    """
    named = {"adversarial": g_adversarial_loss(out[0]), "class": g_class_loss(out[1], labels, weight)}
    if w_img_img > 0:
        named["cycle_img_img"] = w_img_img * cycle_cos_loss(gen_emb, img_emb)
    if w_img_rec > 0:
        named["cycle_img_rec"] = w_img_rec * cycle_cos_loss(gen_emb, rec_emb)
    if layout is not None:  # already weighted (--W_LAYOUT_LOSS)
        named["layout"] = layout
    grads = {}
    for name, term in named.items():
        (grad,) = torch.autograd.grad(term, fake, retain_graph=True)  # (B, 3, 128, 128)
        grads[f"G/grad/{name}"] = grad.float().flatten(1).norm(dim=1).mean()
    return grads
