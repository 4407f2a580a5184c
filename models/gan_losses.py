"""Losses of the synthesis GAN (docs/synthesis.md#the-method), as small named functions.

One training step (the reference's order)::

    fake, mu, logvar = G(rec_emb, z)
    real_out = D(real, mu.detach()); fake_out = D(G.to_imagenet(fake).detach(), mu.detach())
    loss_D = d_real_fake_loss(real_out[0], fake_out[0]) + d_class_loss(real_out[1], fake_out[1], cls, w)
    (update D)
    out = D(G.to_imagenet(fake), mu)
    loss_G = g_adversarial_loss(out[0]) + g_class_loss(out[1], cls, w) + 2 * kl_loss(mu, logvar)
             + W_IMG_IMG * cycle_cos_loss(e, img_emb) + W_IMG_REC * cycle_cos_loss(e, rec_emb)
      where e = encode_generated(frozen_encoder, fake, space=G.cfg.output_space)
    (update G)

:func:`discriminator_loss` and :func:`generator_loss` do these sums and return the terms for
logging. D outputs logits: ``BCEWithLogits`` is the reference's sigmoid + BCE in one stable op.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.gan import to_imagenet
from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

ENCODER_SIZE = 224  # the FoodSpace image encoder's input size (the reference's upsample_layer)
KL_WEIGHT = 2.0  # the reference's ``KL_loss(mu, logvar) * 2``


def class_weights(num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Class-loss weights: 1 for every class except the background class 0 (weight 0)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    w = torch.ones(num_classes, device=device)
    w[0] = 0.0
    return w  # (numClasses,)


def d_real_fake_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """D's adversarial loss: ``BCE(sigmoid(real), 1) + BCE(sigmoid(fake), 0)``, each a batch mean."""
    real_logit, fake_logit = real_logit.float(), fake_logit.float()
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``nn.CrossEntropyLoss(weight)`` (sum of ``w[y] * nll`` over ``sum of w[y]``), but 0 instead of NaN
    when every label in the batch has weight 0 (a batch of background-only recipes).
    """
    logits = logits.float()
    total = F.cross_entropy(logits, labels, weight=weight.to(logits), reduction="sum")  # ()
    denom = weight.to(logits)[labels].sum()  # ()
    return total / denom.clamp_min(torch.finfo(logits.dtype).tiny)  # total is 0 when denom is 0


def d_class_loss(class_logits_real: torch.Tensor, class_logits_fake: torch.Tensor, labels: torch.Tensor,
                 weight: torch.Tensor) -> torch.Tensor:
    """D's class loss: weighted CE of the class head on real images plus on fake images (same labels).

    Args:
        class_logits_real: ``(B, numClasses)`` on the real images.
        class_logits_fake: ``(B, numClasses)`` on the generated images.
        labels: ``(B,)`` class indices of the recipes (0 = background).
        weight: ``(numClasses,)`` from :func:`class_weights`.
    """
    return (weighted_cross_entropy(class_logits_real, labels, weight)
            + weighted_cross_entropy(class_logits_fake, labels, weight))


def g_adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss: ``BCE(sigmoid(fake), 1)`` (fakes scored as real), a batch mean."""
    fake_logit = fake_logit.float()
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def g_class_loss(class_logits_fake: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """G's class loss: weighted CE of D's class head on the generated images."""
    return weighted_cross_entropy(class_logits_fake, labels, weight)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL term of conditioning augmentation: ``-0.5 * mean(1 + logvar - mu^2 - exp(logvar))``.

    The mean runs over batch and dimensions (the reference's; the true KL divergence per sample is
    this times the dimension). Not weighted here: the G loss uses ``KL_WEIGHT * kl_loss``.
    """
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.mean(1.0 + logvar - mu.pow(2) - logvar.exp())


def cycle_cos_loss(gen_emb: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(gen_emb_i, target_emb_i))`` over the batch: 0 when aligned, 2 when opposite.

    The reference's ``CosineEmbeddingLoss(margin=0.3)`` with target 1 (the margin only acts on
    target -1, never used). ``target_emb`` carries no gradient in training (precomputed embeddings).
    """
    if gen_emb.shape != target_emb.shape or gen_emb.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of one shape, got {tuple(gen_emb.shape)} and "
                         f"{tuple(target_emb.shape)}")
    cos = F.cosine_similarity(gen_emb.float(), target_emb.float().to(gen_emb.device), dim=1, eps=1e-8)  # (B,)
    return (1.0 - cos).mean()


CHUNK_ROWS = 16384  # rows converted to float64 at a time by whitening() and class_whitening()


def whitening(embs, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), W (D, D))`` whitening FoodSpace embeddings ``embs`` (N, D): ``(x - mean) @ W``.

    ZCA whitening (``W = U diag(1 / sqrt(lambda + ridge * lambda_max)) U^T`` from the covariance's
    eigenvectors ``U`` and eigenvalues ``lambda``), in float64. Why: a FoodSpace trained briefly is
    nearly collapsed (in the demo's runs the largest eigenvalue holds 82-95% of the variance and
    embeddings of one dish are at cosine 0.97 with those of many others), so ``1 - cos`` is already
    small for a wrong dish and its gradient barely tells dishes apart; whitened, the directions in
    which recipes differ count as much as the one they share. ``ridge`` (> 0) keeps the near-empty
    directions from being blown up into noise.
    """
    if not ridge > 0:
        raise ValueError(f"whitening needs a ridge > 0, got {ridge}")
    x = torch.as_tensor(embs)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"expected (N >= 2, D) embeddings, got {tuple(x.shape)}")
    chunks = torch.split(x, CHUNK_ROWS)  # float64 a chunk at a time: Recipe1M's train split is 280k x 1024
    mean = sum(c.double().sum(0) for c in chunks) / x.shape[0]
    centred = (c.double() - mean for c in chunks)  # each chunk converted and centred once
    cov = sum(d.T @ d for d in centred) / (x.shape[0] - 1)  # (D, D)
    return mean.float(), _inverse_sqrt(cov, ridge)


def _inverse_sqrt(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """``U diag(1 / sqrt(lambda + ridge * lambda_max)) U^T`` of a float64 covariance, as float32."""
    lam, u = torch.linalg.eigh(cov)  # ascending eigenvalues
    lam = lam.clamp_min(0)
    return (u @ torch.diag((lam + ridge * lam.max()).rsqrt()) @ u.T).float()  # (D, D), symmetric


def class_whitening(embs, classes, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), W (D, D))`` whitening by the within-class covariance: ``(x - mean) @ W``.

    ``mean`` is the mean of all ``embs`` (N, D); ``W`` whitens the pooled covariance of the labelled
    embeddings around their class means (``classes`` (N,), 0 = background, left out), with ``ridge``
    as :func:`whitening`'s. Why (``GAN_train.py --G_whiten``): in a briefly trained FoodSpace the
    directions that tell one dish from another hold a tiny share of the variance, too small for G to
    pick up in a few hundred steps; after this they are the large ones (Fisher's discriminant).

    ``embs`` and ``classes`` may also be lists of such arrays, taken as their concatenation without
    building it (Recipe1M's two train files, recipes and images, are 2.3 GB in float32).
    """
    if not ridge > 0:
        raise ValueError(f"whitening needs a ridge > 0, got {ridge}")
    xs = [torch.as_tensor(e) for e in (embs if isinstance(embs, (list, tuple)) else [embs])]
    ys = [torch.as_tensor(c).long() for c in (classes if isinstance(classes, (list, tuple)) else [classes])]
    if len(xs) != len(ys) or any(x.dim() != 2 or x.shape[1] != xs[0].shape[1] or y.shape != (x.shape[0],)
                                 for x, y in zip(xs, ys)):
        raise ValueError(f"expected (N, D) embeddings and (N,) classes, got {[tuple(x.shape) for x in xs]} and "
                         f"{[tuple(y.shape) for y in ys]}")
    y = torch.cat(ys)
    keep = y > 0
    labels, inverse, counts = torch.unique(y[keep], return_inverse=True, return_counts=True)
    dof = int(keep.sum()) - len(labels)
    if len(labels) < 2 or dof < 1:
        raise ValueError(f"the within-class covariance needs two classes other than background and more "
                         f"labelled embeddings than classes; got {int(keep.sum())} in {len(labels)} classes")
    # float64 a chunk at a time, as whitening(): Recipe1M's two train files are 560k x 1024
    index = torch.full((len(y),), -1, dtype=torch.long)
    index[keep] = inverse  # row -> its class's row in `means` (-1: background)
    parts = [part for x, i in zip(xs, torch.split(index, [len(x) for x in xs]))
             for part in zip(torch.split(x, CHUNK_ROWS), torch.split(i, CHUNK_ROWS))]
    dim = xs[0].shape[1]
    total = torch.zeros(dim, dtype=torch.float64)
    means = torch.zeros(len(labels), dim, dtype=torch.float64)
    for c, i in parts:  # pass 1: the overall and the class means
        c = c.double()
        total += c.sum(0)
        means.index_add_(0, i[i >= 0], c[i >= 0])
    means /= counts[:, None]
    scatter = torch.zeros(dim, dim, dtype=torch.float64)
    for c, i in parts:  # pass 2: residuals around the class means
        r = c[i >= 0].double() - means[i[i >= 0]]  # (n, D)
        scatter += r.T @ r
    return (total / len(y)).float(), _inverse_sqrt(scatter / dof, ridge)


def whitened_class_means(embs, classes, mean: torch.Tensor, w: torch.Tensor,
                         num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means of ``(x - mean) @ w``, one block of ``num_classes`` rows per array of ``embs``.

    ``embs``: a list of (N_i, D) arrays (e.g. recipes, then images) with their (N_i,) ``classes``.
    Returns ``(means (len(embs) * num_classes, D), mask)``, the mask True where a class has an
    embedding (background, class 0, is left out). The map is affine, so the raw class means are
    summed (float64, a chunk at a time, as :func:`class_whitening`) and only they are whitened.
    """
    blocks, masks = [], []
    for x, y in zip(embs, classes, strict=True):
        x, y = torch.as_tensor(x), torch.as_tensor(y).long()
        if y.shape != (x.shape[0],) or (y.numel() and (y.min() < 0 or y.max() >= num_classes)):
            raise ValueError(f"expected (N,) classes in [0, {num_classes}) for (N, D) embeddings, got {tuple(y.shape)} "
                             f"for {tuple(x.shape)}")
        sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        for c, i in zip(torch.split(x, CHUNK_ROWS), torch.split(y, CHUNK_ROWS)):
            sums.index_add_(0, i, c.double())
        counts = torch.bincount(y, minlength=num_classes)
        counts[0] = 0  # background: no class to draw
        known = counts > 0
        raw = sums / counts.clamp(min=1)[:, None]  # (C, D)
        blocks.append(((raw - mean.double()) @ w.double()).masked_fill(~known[:, None], 0.0).float())  # unknown: 0
        masks.append(known)
    return torch.cat(blocks), torch.cat(masks)


def whiten(embs: torch.Tensor, space: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(embs - mean) @ W`` for ``space = (mean, W)`` of :func:`whitening`, on ``embs``'s device and dtype."""
    mean, w = space
    return (embs - mean.to(embs)) @ w.to(embs)


def layout_loss(fake_imagenet: torch.Tensor, real_imagenet: torch.Tensor, size: int) -> torch.Tensor:
    """Mean absolute difference, in pixel units ([0, 1]), of the two images shrunk to ``size x size``.

    The images' layout and colours (a plate on its ground) at a resolution where the photo's random
    placement, pieces and noise average out: what any encoder sees of a dish, not what only G's
    own encoder reads. This project's (``--W_LAYOUT_LOSS``), not the reference's.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=fake_imagenet.dtype, device=fake_imagenet.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=fake_imagenet.dtype, device=fake_imagenet.device).view(1, 3, 1, 1)
    fake = F.adaptive_avg_pool2d(fake_imagenet * std + mean, size)  # (B, 3, size, size) in [0, 1]
    real = F.adaptive_avg_pool2d(real_imagenet * std + mean, size)
    return (fake - real).abs().mean()


def freeze_encoder(encoder: nn.Module) -> nn.Module:
    """Put the FoodSpace image encoder in eval mode with its parameters frozen; returns it.

    Gradients still flow through it to its input (the generated images), which is what the cycle
    terms need; its weights receive none, and its BN layers use their running statistics.
    """
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def encode_generated(image_embedder: nn.Module, fake_128: torch.Tensor, space: str = "imagenet") -> torch.Tensor:
    """Embed generated images with the frozen FoodSpace image encoder, keeping gradients to G.

    ``fake_128`` (G's tanh output, or ``"imagenet"``-space real images) is mapped into
    ImageNet-normalised space with :func:`models.gan.to_imagenet` (``space`` = the generator's
    ``cfg.output_space``: ``"pixel"`` reads [-1, 1] as pixel values [0, 1] and normalises them,
    ``"imagenet"`` takes the output as already normalised, as the reference does), because the
    encoder was trained on ImageNet-normalised crops and D compares G's output with
    ImageNet-normalised real images in that same space. Then it is resized to the encoder's own
    input size (``image_embedder.input_size``, default ``ENCODER_SIZE`` = 224, the crop size it was
    trained and evaluated at, set by :func:`models.foodspace.load_image_encoder`): upsampling is
    bilinear with ``align_corners=True`` (the reference's ``nn.Upsample``); shrinking (encoders
    trained on smaller crops) is bilinear and antialiased, in float32, as PIL shrank the real
    images the cycle targets come from. Mapping first is cheaper and equivalent, as the mapping is
    a per-channel affine map and bilinear weights sum to one.

    Args:
        image_embedder: the encoder (e.g. ``models.foodspace.ImageEmbedder``), frozen with
            :func:`freeze_encoder` (eval mode, no parameter requiring gradients).
        fake_128: ``(B, 3, 128, 128)`` generator output.
        space: the generator's output space.

    Returns:
        ``(B, D)`` embeddings (L2-normalised when the encoder normalises).

    Raises:
        ValueError: the encoder is in training mode or has trainable parameters (BN statistics
            would drift and its weights would collect gradients).
    """
    if image_embedder.training or any(p.requires_grad for p in image_embedder.parameters()):
        raise ValueError("the image encoder must be frozen for the cycle losses: call "
                         "models.gan_losses.freeze_encoder(encoder) first (eval mode, requires_grad off)")
    size = int(getattr(image_embedder, "input_size", ENCODER_SIZE))
    x = to_imagenet(fake_128, space)  # (B, 3, 128, 128)
    if size < x.shape[-1]:
        # float32: the antialiased kernel has no half-precision CPU version (fp16/bf16 autocast)
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).to(x.dtype)
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)  # (B, 3, size, size)
    return image_embedder(x)  # (B, D)


class DLoss(NamedTuple):
    """D's total loss and its detached terms."""

    loss: torch.Tensor
    real_fake: torch.Tensor
    cls: torch.Tensor


class GLoss(NamedTuple):
    """G's total loss and its detached terms (``img_img`` / ``img_rec`` are None when switched off)."""

    loss: torch.Tensor
    adversarial: torch.Tensor
    cls: torch.Tensor
    kl: torch.Tensor
    img_img: torch.Tensor | None
    img_rec: torch.Tensor | None


def discriminator_loss(real_out: tuple[torch.Tensor, torch.Tensor], fake_out: tuple[torch.Tensor, torch.Tensor],
                       labels: torch.Tensor, weight: torch.Tensor) -> DLoss:
    """``BCE(real) + BCE(fake) + CE(class | real) + CE(class | fake)`` from D's two outputs."""
    rf = d_real_fake_loss(real_out[0], fake_out[0])
    cl = d_class_loss(real_out[1], fake_out[1], labels, weight)
    return DLoss(rf + cl, rf.detach(), cl.detach())


def generator_loss(fake_out: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, weight: torch.Tensor,
                   mu: torch.Tensor, logvar: torch.Tensor, *, gen_emb: torch.Tensor | None = None,
                   img_emb: torch.Tensor | None = None, rec_emb: torch.Tensor | None = None,
                   w_img_img: float = 32.0, w_img_rec: float = 32.0, w_kl: float = KL_WEIGHT) -> GLoss:
    """G's loss: adversarial + class + ``w_kl`` x KL (the reference's ``KL_WEIGHT``) + the weighted cycle terms.

    Args:
        fake_out: D's ``(cond_logit, class_logits)`` on the generated images (not detached).
        labels, weight: the class labels and :func:`class_weights`.
        mu, logvar: from G.
        gen_emb: :func:`encode_generated` output; needed when a cycle weight is > 0.
        img_emb: ``(B, D)`` precomputed embeddings of the real images (``W_IMG_IMG_COS_LOSS`` term).
        rec_emb: ``(B, D)`` recipe embeddings (``W_IMG_REC_COS_LOSS`` term).
        w_img_img, w_img_rec: the weights; 0 switches a term off.
    """
    adv = g_adversarial_loss(fake_out[0])
    cl = g_class_loss(fake_out[1], labels, weight)
    kl = kl_loss(mu, logvar)
    loss = adv + cl + w_kl * kl
    terms: dict[str, torch.Tensor | None] = {"img_img": None, "img_rec": None}
    for name, w, target in (("img_img", w_img_img, img_emb), ("img_rec", w_img_rec, rec_emb)):
        if w > 0:
            if gen_emb is None or target is None:
                raise ValueError(f"the {name} cycle term has weight {w} but gen_emb or its target is missing")
            term = cycle_cos_loss(gen_emb, target)
            loss = loss + w * term
            terms[name] = term.detach()
    return GLoss(loss, adv.detach(), cl.detach(), kl.detach(), terms["img_img"], terms["img_rec"])
