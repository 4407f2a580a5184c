"""Differentiable random views of images for the synthesis GAN (this project's; docs/synthesis.md).

G's cycle loss asks one frozen encoder E to embed G's image near the recipe's embedding. Asked on
one fixed view, G can satisfy E through patterns only E reads (an encoder trained on the same
photos with another seed sees almost none of the recipe in them). Asked on a random view per
sample (a crop rescaled to the full size, a horizontal flip, a small change of brightness,
contrast and saturation), G has to draw what survives those changes: the plate, the colours, the
layout, the things any encoder trained on photos reads (GAN_train.py ``--cycle_aug``). The same
views shown to D on real and generated images alike (``--D_aug``, as DiffAugment) keep D from
memorising the few training photos, so it keeps teaching G.

Every view is drawn per sample from the given ``torch.Generator`` (or the global RNG), and is
differentiable in the image, so G's gradients flow through it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

AUG_OPS = ("crop", "flip", "color")
CROP_SCALE = (0.7, 1.0)  # side of the crop as a fraction of the image side
COLOR_RANGE = 0.2  # brightness, contrast and saturation factors drawn in [1 - r, 1 + r]


def parse_aug(value: str) -> tuple[str, ...]:
    """``none`` (or empty) -> (); ``all`` -> every op; else a comma list of :data:`AUG_OPS`, in that order."""
    text = str(value).strip().lower()
    if text in ("", "none", "0", "false"):
        return ()
    if text == "all":
        return AUG_OPS
    ops = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in ops if t not in AUG_OPS]
    if bad:
        raise argparse.ArgumentTypeError(f"augmentation {', '.join(bad)}: use none, all or a comma list of "
                                         f"{', '.join(AUG_OPS)}")
    return tuple(op for op in AUG_OPS if op in ops)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, gen) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=gen.device if gen else like.device).to(like)


def random_view(pixels: torch.Tensor, ops: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """A random view per sample of ``pixels`` (B, 3, H, W), RGB in about [0, 1]; same shape, differentiable.

    ``crop``: a square crop of side ``CROP_SCALE`` x the image, anywhere inside it, resized back to
    H x W (bilinear); ``flip``: mirrored left-right with probability 1/2; ``color``: brightness,
    contrast (around the image's mean grey) and saturation each scaled by a factor in
    ``1 +- COLOR_RANGE``. With no ``ops`` the input itself is returned.
    """
    if not ops:
        return pixels
    b = pixels.shape[0]
    out = pixels
    if "crop" in ops or "flip" in ops:
        scale = _uniform(b, *CROP_SCALE, pixels, generator) if "crop" in ops else torch.ones(b).to(pixels)
        tx = _uniform(b, -1.0, 1.0, pixels, generator) * (1 - scale)  # the crop stays inside the image
        ty = _uniform(b, -1.0, 1.0, pixels, generator) * (1 - scale)
        sign = torch.ones(b).to(pixels)
        if "flip" in ops:
            sign = torch.where(_uniform(b, 0.0, 1.0, pixels, generator) < 0.5, -sign, sign)
        theta = torch.zeros(b, 2, 3).to(pixels)  # (B, 2, 3) output -> input coordinates
        theta[:, 0, 0], theta[:, 0, 2] = scale * sign, tx
        theta[:, 1, 1], theta[:, 1, 2] = scale, ty
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)  # (B, H, W, 2)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if "color" in ops:
        lo, hi = 1 - COLOR_RANGE, 1 + COLOR_RANGE
        bright = _uniform(b, lo, hi, pixels, generator).view(b, 1, 1, 1)
        contrast = _uniform(b, lo, hi, pixels, generator).view(b, 1, 1, 1)
        saturation = _uniform(b, lo, hi, pixels, generator).view(b, 1, 1, 1)
        out = out * bright
        mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        out = (out - mean) * contrast + mean
        grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])  # (B, 1, H, W)
        out = (out - grey) * saturation + grey
    return out


def random_view_imagenet(images: torch.Tensor, ops: tuple[str, ...],
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`random_view` of ImageNet-normalised ``images`` (B, 3, H, W), returned normalised (unclamped)."""
    if not ops:
        return images
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (random_view(images * std + mean, ops, generator) - mean) / std


def instance_noise(images: torch.Tensor, std: float) -> torch.Tensor:
    """``images`` plus Gaussian noise of standard deviation ``std`` (0: the input itself)."""
    return images + std * torch.randn_like(images) if std > 0 else images
