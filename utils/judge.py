"""An independent judge of synthesis: a second FoodSpace run that scores G's images (docs/synthesis.md).

G is trained to move the embeddings of one image encoder (its cycle loss); scored by that same
encoder, an image that only pushes that encoder's features the right way scores as well as one
that shows the recipe. A *judge* is another train.py run on the same LMDB (another seed), with
test.py's embeddings: its image encoder never saw G's images, so what it recognises in them is
the recipe, not the blind spots of G's encoder. GAN_test.py ``--judge_dir`` and GAN_train.py
``--judge_dir`` use it.

This module holds what the scripts share about it: the refusals (:func:`check_judge_run`,
:func:`check_same_recipes`), the spread of a set of embeddings (:func:`spread`) and the
own-encoder / judge comparison (:func:`ratio_rows`); :mod:`pipeline.judge` loads a judge run
with these checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from utils.errors import InputError

# What a manifest.json records about the data an encoder was trained on (docs/data.md); two runs
# on the same LMDB agree on all of it.
MANIFEST_KEYS = ("format_version", "counts", "languages", "tokenizer", "vocab_size", "max_len", "max_imgs",
                 "special_ids", "dropped", "empty_partitions")


class JudgeError(InputError):
    """A judge run that cannot judge G: the same run as G's encoder, or a run on other data."""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def data_identity(data_path: str | Path | None) -> dict | None:
    """What ``<data_path>/manifest.json`` records about the LMDB (:data:`MANIFEST_KEYS`), or None without one."""
    if not data_path:
        return None
    path = Path(data_path) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: manifest.get(k) for k in MANIFEST_KEYS}


def check_judge_run(judge_dir: str | Path, encoder_dir: str | Path, judge_encoder: Path, own_encoder: Path,
                    judge_data: str | Path | None, own_data: str | Path | None) -> None:
    """Refuse a judge that is G's own encoder run, or was trained on another LMDB.

    Args:
        judge_dir, encoder_dir: the judge's and G's train.py run folders.
        judge_encoder, own_encoder: their exported image encoders (a copied run has identical bytes).
        judge_data, own_data: the ``data_path`` each run was trained on (their options).

    Raises:
        JudgeError: one line naming the judge and the fix.
    """
    fix = "give --judge_dir another train.py run (another --seed) on the same --data_path, with test.py's outputs"
    if Path(judge_dir).resolve() == Path(encoder_dir).resolve() or (
            judge_encoder.stat().st_size == own_encoder.stat().st_size
            and _digest(judge_encoder) == _digest(own_encoder)):
        raise JudgeError(f"--judge_dir {judge_dir}: the same run as G's encoder ({own_encoder.name}) cannot judge "
                         f"G independently; {fix}")
    if judge_data and own_data and Path(judge_data).resolve() == Path(own_data).resolve():
        return
    judge_id, own_id = data_identity(judge_data), data_identity(own_data)
    if judge_id is None or own_id is None or judge_id != own_id:
        raise JudgeError(f"--judge_dir {judge_dir}: trained on {judge_data}, not on G's LMDB {own_data} "
                         f"(their manifest.json differ or is missing); {fix}")


def check_same_recipes(judge_ids, own_ids, judge_file: Path, own_file: Path) -> None:
    """The judge's embedding file must hold the recipes of G's, in the same order (the same bags).

    Raises:
        JudgeError: naming both files and the first recipe that differs.
    """
    judge_ids, own_ids = [str(i) for i in judge_ids], [str(i) for i in own_ids]
    if judge_ids != own_ids:
        first = next((k for k, (a, b) in enumerate(zip(judge_ids, own_ids)) if a != b), min(len(judge_ids),
                                                                                            len(own_ids)))
        raise JudgeError(f"{judge_file}: {len(judge_ids)} recipes, {own_file}: {len(own_ids)}; they differ from "
                         f"row {first}: the judge was not evaluated on G's split (rerun test.py for it)")


def spread(embs: torch.Tensor | np.ndarray) -> float:
    """Mean pairwise cosine distance of L2-normalised rows (0 when every row is the same: mode collapse)."""
    embs = torch.as_tensor(embs)
    n = embs.shape[0]
    total = embs.double().sum(0)  # (D,)
    mean_cos = (total.dot(total) - n) / (n * (n - 1))  # off-diagonal mean of the Gram matrix
    return float(1.0 - mean_cos)


def ratio_rows(generated: dict, real: dict) -> dict:
    """Per bag: generated / real medR and R@10 (``{bag: {"medR": x, "R@10": y}}``; 1 is as good as the photos)."""
    out = {}
    for bag, fake in generated.items():
        photo = real.get(bag)
        if photo is not None:
            out[bag] = {"medR": fake["medR"] / photo["medR"], "R@10": fake["R@10"] / max(photo["R@10"], 1e-12)}
    return out


def format_ratios(ratios: dict, who: str) -> str:
    """One line per bag: ``<who>: generated / real medR xA, R@10 xB``."""
    return "\n".join(f"{who} ({bag}): generated / real medR x{r['medR']:.2f}, R@10 x{r['R@10']:.2f}"
                     for bag, r in ratios.items())
