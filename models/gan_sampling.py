"""Noise modes and image generation with a trained G, for validation, grids and GAN_test.py (SPEC section 6).

Three noise modes (:data:`NOISE_MODES`, parsed by :func:`parse_noise_mode`): ``BATCH_RANDOM``
draws ``z`` and the conditioning noise per sample from a seeded generator, ``SINGLE_RANDOM``
shares one seeded vector of each among all samples, ``ZERO`` sets both to zero (c = mu).
:func:`draw_noise` draws them up front for all samples, so :func:`generate`, which runs G in eval
mode over FoodSpace embeddings in batches and returns the generated images' encoder embeddings
(:func:`utils.encoder_run.encode_fake`), gives the same result for any batch size.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from models.gan import GANConfig, Generator, make_noise
from utils.encoder_run import encode_fake

NOISE_MODES = ("BATCH_RANDOM", "SINGLE_RANDOM", "ZERO")  # models.gan.make_noise: random, fixed, zero


def parse_noise_mode(value: str) -> str:
    """``BATCH_RANDOM`` / ``SINGLE_RANDOM`` / ``ZERO`` (or random / fixed / zero), any case -> canonical name."""
    text = str(value).strip().upper()
    aliases = {"RANDOM": "BATCH_RANDOM", "FIXED": "SINGLE_RANDOM"}
    text = aliases.get(text, text)
    if text not in NOISE_MODES:
        raise argparse.ArgumentTypeError(f"noise mode {value!r}: use BATCH_RANDOM, SINGLE_RANDOM or ZERO")
    return text


def draw_noise(n: int, cfg: GANConfig, mode: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (n, Z_DIM) and the conditioning noise ``eps`` (n, EMBEDDING_DIM) of a noise mode, on the CPU.

    BATCH_RANDOM: both drawn per sample from a generator seeded with ``seed``; SINGLE_RANDOM: one
    seeded vector each, shared by every sample; ZERO: both zero (c = mu). Everything is drawn up
    front for all ``n`` samples, so results do not depend on the batch size.
    """
    mode = parse_noise_mode(mode)
    if mode == "BATCH_RANDOM":
        gen = torch.Generator().manual_seed(seed)
        return make_noise(n, cfg.z_dim, "random", generator=gen), torch.randn(n, cfg.ef_dim, generator=gen)
    if mode == "SINGLE_RANDOM":
        return make_noise(n, cfg.z_dim, "fixed", seed=seed), make_noise(n, cfg.ef_dim, "fixed", seed=seed + 1)
    return torch.zeros(n, cfg.z_dim), torch.zeros(n, cfg.ef_dim)


@torch.no_grad()
def generate(G: Generator, embs: torch.Tensor, *, mode: str, seed: int, batch_size: int, device, ctx,
             encoder: torch.nn.Module | None = None, on_batch=None, desc: str = "generate") -> torch.Tensor | None:
    """Generate one image per row of ``embs`` (N, D) in eval mode; return their encoder embeddings.

    Args:
        G: the generator (its training mode is restored afterwards).
        embs: FoodSpace embeddings to generate from.
        mode, seed: the noise (:func:`draw_noise`).
        encoder: the frozen image encoder; None: return None (only ``on_batch`` sees the images).
        on_batch: called as ``on_batch(start, pixels)`` with ``pixels`` (b, 3, 128, 128) in [0, 1] on the CPU.

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
                out.append(encode_fake(encoder, fake, G.cfg.output_space).float().cpu())  # (b, D)
        if on_batch is not None:
            on_batch(start, G.to_pixels(fake.float()).cpu())
    G.train(was_training)
    return torch.cat(out) if encoder is not None else None
