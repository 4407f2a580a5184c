"""The one checkpoint format (docs/run_folders.md): tensors and plain values, written atomically.

A checkpoint is a dict made by :func:`checkpoint_state` such as::

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
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError
from utils.io import atomic_write

CHECKPOINT_FORMAT = 1
# torch names the refused class in its weights_only message: "Unsupported global: GLOBAL x.y was not ..."
# torch names the refused class in one of two phrasings (an unknown global; a blocked module's)
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


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


def checkpoint_state(kind: str, **fields) -> dict:
    """A checkpoint dict: ``{"format": CHECKPOINT_FORMAT, "kind": kind, **fields}``."""
    return {"format": CHECKPOINT_FORMAT, "kind": kind, **fields}


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename)."""
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: one line naming the file: missing, cut short or corrupt, or refused by
            ``weights_only`` (with the class it holds).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would add a line to the error
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or a foreign pickle
        refused = _UNSUPPORTED_GLOBAL.search(str(exc))
        if refused:
            raise CheckpointError(f"{path}: refused by torch.load(weights_only=True): it holds {refused.group(1)} "
                                  "(not a checkpoint this project wrote; never unpickle untrusted files)") from exc
        raise CheckpointError(f"{path}: not a readable checkpoint (cut short or corrupt): {_short_reason(exc)}") from exc


def _short_reason(exc: Exception) -> str:
    """The first sentence of torch's message (its ``WeightsUnpickler error:`` part when there is one)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    text = (found.group(1) if found else text).strip()
    first = re.split(r"\.\s|\n", text, maxsplit=1)[0].strip().rstrip(".")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def state_dict_mismatch(expected: dict, given: dict) -> str:
    """Why ``given`` does not load into a model whose state dict is ``expected``, in one line.

    The first tensor (in the model's order) whose shape differs, with both shapes; else the first
    missing and unexpected keys.
    """
    for name, tensor in expected.items():
        other = given.get(name)
        if isinstance(other, torch.Tensor) and tuple(other.shape) != tuple(tensor.shape):
            return (f"{name} has shape {tuple(other.shape)} in the checkpoint, {tuple(tensor.shape)} in the model "
                    f"built here")
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    parts = [f"{len(keys)} {what} key(s), first {keys[0]}" for what, keys in (("missing", missing),
                                                                            ("unexpected", unexpected)) if keys]
    return "; ".join(parts) or "the state dict does not load"
