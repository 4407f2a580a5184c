"""The one checkpoint format (SPEC section 8): tensors and plain values, written atomically.

A checkpoint is a dict such as::

    {"format": 1, "kind": "foodspace", "arch": ArchConfig.to_dict(), "model": state_dict,
     "optimizer": ..., "scaler": ..., "epoch": int, "iteration": int, "best": {...},
     "rng": utils.seed.get_rng_state(), "opts": {flag: plain value}}

and loads with ``torch.load(path, weights_only=True)``: no dataclass, Namespace, Path or numpy
object may sit in it; :func:`to_plain` converts options for storage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from utils.io import atomic_write

CHECKPOINT_FORMAT = 1
ENCODER_SUFFIX = "_image_encoder.pth.tar"


def to_plain(value: Any) -> Any:
    """Convert options (Namespace, Path, tuples, numpy scalars) to plain JSON-like values."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


class PlainConfig:
    """Mixin for the dataclass configs stored in checkpoints as plain dicts (``weights_only`` safe)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Rebuild from :meth:`to_dict`'s output; missing keys take defaults, unknown keys are refused."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown} (known: {', '.join(known)}); was this "
                             "checkpoint written by another version of the code?")
        return cls(**d)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename)."""
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or a foreign pickle
        raise RuntimeError(f"cannot load checkpoint {path} with weights_only=True: {exc}") from exc


def is_image_encoder_file(path: str | Path) -> bool:
    """True for an exported image encoder (``<ckpt>_image_encoder.pth.tar``), never a training checkpoint."""
    return Path(path).name.endswith(ENCODER_SUFFIX)
