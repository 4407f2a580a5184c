"""Noise modes and image generation with a trained G, for validation, grids and GAN_test.py.

G turns a FoodSpace embedding into ``c = mu + sigma * eps`` (conditioning augmentation) and
generates from ``[c, z]``. The reference's three noise modes differ only in ``z``; its
conditioning augmentation draws ``eps`` afresh for every recipe in every mode, in training and
in eval mode alike:

=================  ==============================  =============================
mode               z                               eps
=================  ==============================  =============================
``BATCH_RANDOM``   drawn per recipe                drawn per recipe
``SINGLE_RANDOM``  one vector shared by all        drawn per recipe
``ZERO``           0                               drawn per recipe
``MEAN``           0                               0, so ``c = mu`` (this project's)
=================  ==============================  =============================

``MEAN`` is not in the reference: it makes G a deterministic function of the embedding, which
shows what G has learnt without the sampling noise (docs/synthesis.md).

:func:`draw_noise` draws everything up front from one generator seeded with ``seed`` (so the same
command gives the same images, whatever the batch size); :func:`generate` runs G in eval mode
over embeddings in batches and returns the generated images' encoder embeddings
(:func:`models.gan_losses.encode_generated`). :data:`NOISE_MODES` is the one list of the modes;
:func:`noise_mode_help` names them for a flag's help.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from models.gan import GANConfig, Generator
from models.gan_losses import encode_generated

NOISE_MODES = ("BATCH_RANDOM", "SINGLE_RANDOM", "ZERO", "MEAN")
NOISE_ALIASES = {"RANDOM": "BATCH_RANDOM", "FIXED": "SINGLE_RANDOM"}


def noise_mode_help() -> str:
    """``BATCH_RANDOM, SINGLE_RANDOM, ZERO or MEAN``: the modes, for messages and help texts."""
    return f"{', '.join(NOISE_MODES[:-1])} or {NOISE_MODES[-1]}"


def parse_noise_mode(value: str) -> str:
    """``BATCH_RANDOM`` / ``SINGLE_RANDOM`` / ``ZERO`` / ``MEAN`` (or random / fixed / zero), any case -> name."""
    text = str(value).strip().upper()
    text = NOISE_ALIASES.get(text, text)
    if text not in NOISE_MODES:
        raise argparse.ArgumentTypeError(f"noise mode {value!r}: use {noise_mode_help()}")
    return text


def draw_noise(n: int, cfg: GANConfig, mode: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (n, Z_DIM) and the conditioning noise ``eps`` (n, EMBEDDING_DIM) of a noise mode, on the CPU.

    One ``torch.Generator`` seeded with ``seed`` draws, in this order, ``z`` (``n`` rows for
    BATCH_RANDOM, one row repeated for SINGLE_RANDOM, nothing for ZERO and MEAN), then ``eps``
    (``n`` rows; zeros for MEAN). See the module docstring for what each mode means.
    """
    mode = parse_noise_mode(mode)
    if mode == "MEAN":
        return torch.zeros(n, cfg.z_dim), torch.zeros(n, cfg.ef_dim)
    gen = torch.Generator().manual_seed(seed)
    if mode == "BATCH_RANDOM":
        z = torch.randn(n, cfg.z_dim, generator=gen)
    elif mode == "SINGLE_RANDOM":
        z = torch.randn(1, cfg.z_dim, generator=gen).expand(n, -1).clone()
    else:  # ZERO
        z = torch.zeros(n, cfg.z_dim)
    eps = torch.randn(n, cfg.ef_dim, generator=gen)  # per recipe in every mode, as the reference
    return z, eps


@torch.no_grad()
def generate(G: Generator, embs: torch.Tensor, *, mode: str, seed: int, batch_size: int, device, ctx,
             encoder: torch.nn.Module | None = None, on_batch=None, on_fake=None,
             desc: str = "generate") -> torch.Tensor | None:
    """Generate one image per row of ``embs`` (N, D) in eval mode; return their encoder embeddings.

    Args:
        G: the generator (its training mode is restored afterwards).
        embs: FoodSpace embeddings to generate from.
        mode, seed: the noise (:func:`draw_noise`).
        encoder: the frozen image encoder; None: return None (only ``on_batch`` sees the images).
        on_batch: called as ``on_batch(start, pixels)`` with ``pixels`` (b, 3, 128, 128) in [0, 1] on the CPU.
        on_fake: called as ``on_fake(start, fake)`` with G's output (b, 3, 128, 128) on the device, inside
            ``ctx`` (e.g. to embed the same images with a second encoder, GAN_test.py ``--judge_dir``).

    Returns:
        (N, D) float32 CPU embeddings of the generated images, or None without an encoder.
    """
    z_all, eps_all = draw_noise(embs.shape[0], G.cfg, mode, seed)
    was_training = G.training
    G.eval()
    out = []
    for start in tqdm(range(0, embs.shape[0], batch_size), desc=desc, leave=False, dynamic_ncols=True):
        sl = slice(start, start + batch_size)
        with ctx:
            fake, _, _ = G(embs[sl].to(device), z_all[sl].to(device), eps=eps_all[sl].to(device))  # (b, 3, 128, 128)
            if encoder is not None:
                out.append(encode_generated(encoder, fake, G.cfg.output_space).float().cpu())  # (b, D)
            if on_fake is not None:
                on_fake(start, fake)
        if on_batch is not None:
            on_batch(start, G.to_pixels(fake.float()).cpu())
    G.train(was_training)
    return torch.cat(out) if encoder is not None else None
