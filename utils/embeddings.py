"""FoodSpace embedding extraction and the ``.npz`` files test.py writes (docs/run_folders.md)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import InputError
from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device
from utils.io import atomic_write
from utils.lineage import KEY as LINEAGE

EMBEDDING_KEYS = ("img_embeds", "rec_embeds", "rec_ids")
_MAKER = "test.py --model_init_path <checkpoint> writes foodSpace_vectors_*.npz"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_NPY_MAGIC = b"\x93NUMPY"

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


class EmbeddingsError(InputError):
    """An embeddings file that is missing or malformed; the message names the file and the fault."""


def thumbnails(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """ImageNet-normalised (or uint8) images (B,3,S,S) -> [0,1] thumbnails (B,3,size,size) on the CPU."""
    if images.dtype == torch.uint8:
        images = images.cpu().float() / 255
    else:
        images = images.detach().float().cpu() * _STD + _MEAN
    return F.interpolate(images.clamp(0, 1), size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def extract_embeddings(model, loader, device, ctx, *, channels_last=False, tracker=None,
                       thumbs: int = 0, desc: str = "embed") -> dict:
    """Run ``model`` (images, tokens) -> (img_emb, rec_emb) over ``loader`` in eval mode.

    Returns ``img_embeds`` and ``rec_embeds`` float32 (N, D), ``rec_ids`` ``<U10`` (N,), and with
    ``thumbs > 0`` the first ``thumbs`` images as (K,3,32,32) thumbnails. Unreadable images are
    skipped (``tracker.update`` counts them and stops beyond its limit). uint8 images (datasets
    built with ``uint8=True``) are normalised on ``device``.
    """
    was_training = model.training
    model.eval()
    imgs, recs, ids, thumb_list, kept = [], [], [], [], 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        if tracker is not None:
            tracker.update(batch.bad)
        if batch.images.shape[0] == 0:
            continue
        images = batch.images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images = normalize_on_device(images)  # uint8 -> float32 normalised; floats as they are
        with ctx:
            img_emb, rec_emb = model(images, batch.tokens.to(device, non_blocking=True))  # (B, D) each
        imgs.append(img_emb.float().cpu())
        recs.append(rec_emb.float().cpu())
        ids.extend(batch.recipe_ids)
        if kept < thumbs:
            take = batch.images[: thumbs - kept]
            thumb_list.append(thumbnails(take))
            kept += take.shape[0]
    model.train(was_training)
    dim = imgs[0].shape[1] if imgs else 0
    out = {
        "img_embeds": torch.cat(imgs).numpy() if imgs else np.zeros((0, dim), np.float32),
        "rec_embeds": torch.cat(recs).numpy() if recs else np.zeros((0, dim), np.float32),
        "rec_ids": np.asarray(ids, dtype="<U10"),
    }
    if thumbs:
        out["thumbs"] = torch.cat(thumb_list) if thumb_list else torch.zeros(0, 3, 32, 32)
    return out


def save_embeddings(path: str | Path, img_embeds, rec_embeds, rec_ids, lineage: dict | None = None) -> None:
    """Write the three arrays to ``path`` (``.npz``) atomically, loadable with allow_pickle=False.

    ``lineage`` (utils/lineage.py) is stored as the array ``lineage``: its JSON as UTF-8 bytes, which
    a person can read in the file (``unzip -p <file> lineage.npy``).
    """
    extra = {LINEAGE: np.asarray(json.dumps(lineage, sort_keys=True).encode("utf-8"))} if lineage else {}
    with atomic_write(path, "wb") as handle:
        np.savez(handle, img_embeds=np.asarray(img_embeds, np.float32),
                 rec_embeds=np.asarray(rec_embeds, np.float32), rec_ids=np.asarray(rec_ids, dtype="<U10"), **extra)


def embeddings_lineage(path: str | Path) -> dict | None:
    """The ``lineage`` an embedding file records (None for a file written before it was recorded).

    Reads that array only; call after :func:`load_embeddings` or on a file known to be an ``.npz``.

    Raises:
        EmbeddingsError: the file is unreadable or its ``lineage`` is not a JSON object.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if LINEAGE not in data.files:
                return None
            raw = data[LINEAGE].item()  # bytes (or str)
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise EmbeddingsError(f"{path}: its lineage is unreadable ({type(err).__name__}: {_one_line(err)}); "
                              f"{_MAKER}") from None
    if not isinstance(value, dict):
        raise EmbeddingsError(f"{path}: its lineage is not a JSON object ({_MAKER})")
    return value


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a file written by :func:`save_embeddings` (never unpickles).

    Returns:
        ``img_embeds`` and ``rec_embeds`` float32 ``(N, D)``, ``rec_ids`` str ``(N,)``.

    Raises:
        EmbeddingsError: one line naming the file and what is wrong: missing, not a file, not an
            ``.npz`` archive (a text or ``.npy`` file, cut short), an array missing or holding
            pickled objects, or contents :func:`validate_embeddings` refuses.
    """
    path = Path(path)
    if not path.exists():
        raise EmbeddingsError(f"{path}: no such file ({_MAKER})")
    if not path.is_file():
        raise EmbeddingsError(f"{path}: not a file; give a foodSpace_vectors_*.npz file ({_MAKER})")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(_NPY_MAGIC):
            what = "a single .npy array"
        elif not head:
            what = "an empty file"
        elif head[:1] == b"\x80":
            what = "a Python pickle (never loaded)"
        elif _looks_like_text(head):
            what = f"a text file (it starts with {head[:24].decode('utf-8', 'replace').strip()!r})"
        else:
            what = "of an unknown format"
        raise EmbeddingsError(f"{path}: not an .npz archive of {', '.join(EMBEDDING_KEYS)}: it is {what} "
                              f"({_MAKER})")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in EMBEDDING_KEYS if key not in data.files]
            if missing:
                raise EmbeddingsError(f"{path}: array(s) {', '.join(missing)} missing (it holds: "
                                      f"{', '.join(data.files) or 'nothing'}; {_MAKER})")
            for key in EMBEDDING_KEYS:
                try:
                    arrays[key] = data[key]
                except ValueError as err:
                    if "allow_pickle" in str(err):
                        raise EmbeddingsError(f"{path}: array {key} holds pickled Python objects, which are "
                                              f"never loaded; {key} must be a plain array ({_MAKER})") from None
                    raise
    except EmbeddingsError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:
        raise EmbeddingsError(f"{path}: not a readable .npz archive (cut short or corrupt: "
                              f"{type(err).__name__}: {_one_line(err)}); {_MAKER}") from None
    return validate_embeddings(arrays, path)


def validate_embeddings(emb: dict, path: str | Path) -> dict[str, np.ndarray]:
    """Check the arrays of an embeddings file and return them as the documented dtypes.

    ``img_embeds`` and ``rec_embeds`` must be floating-point ``(N, D)`` of one shape with finite
    values; ``rec_ids`` ``(N,)`` strings, one per row, without duplicates.

    Returns:
        ``img_embeds``, ``rec_embeds`` as float32 and ``rec_ids`` as ``<U10`` (or wider).

    Raises:
        EmbeddingsError: one line naming ``path`` and the first fault found.
    """
    def fail(what: str) -> EmbeddingsError:
        return EmbeddingsError(f"{path}: {what} ({_MAKER})")

    out: dict[str, np.ndarray] = {}
    for key in ("img_embeds", "rec_embeds"):
        value = emb.get(key)
        if not isinstance(value, np.ndarray):
            raise fail(f"{key} is not an array (a {type(value).__name__})")
        if value.ndim != 2 or value.shape[1] < 1:
            raise fail(f"{key} has shape {value.shape}, expected (recipes, dim)")
        if value.dtype.kind != "f":
            raise fail(f"{key} has dtype {value.dtype}, expected float32")
        bad = ~np.isfinite(value).all(axis=1)
        if bad.any():
            raise fail(f"{key} row {int(np.argmax(bad))} holds NaN or infinite values")
        out[key] = value.astype(np.float32, copy=False)
    if out["img_embeds"].shape != out["rec_embeds"].shape:
        raise fail(f"img_embeds {out['img_embeds'].shape} and rec_embeds {out['rec_embeds'].shape} differ in shape")
    ids = emb.get("rec_ids")
    if not isinstance(ids, np.ndarray):
        raise fail(f"rec_ids is not an array (a {type(ids).__name__})")
    if ids.dtype.kind != "U":
        raise fail(f"rec_ids has dtype {ids.dtype}, expected strings (<U10)")
    if ids.ndim != 1:
        raise fail(f"rec_ids has shape {ids.shape}, expected (recipes,)")
    rows = out["img_embeds"].shape[0]
    if ids.shape[0] != rows:
        raise fail(f"{ids.shape[0]} rec_ids for {rows} embedding rows; each row needs its recipe id")
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if unique.shape[0] != rows:
        dup = np.flatnonzero(counts > 1)
        which = dup[np.argmin(first[dup])]  # the duplicate seen first in the file
        raise fail(f"rec_ids lists {dup.shape[0]} recipe id(s) more than once, e.g. {str(unique[which])!r} "
                   f"{counts[which]} times; each recipe must appear once")
    out["rec_ids"] = ids
    return out


def _looks_like_text(head: bytes) -> bool:
    """No control bytes but tabs and line ends (UTF-8 bytes of other scripts are >= 0x80)."""
    return all(c >= 32 or c in b"\t\n\r" for c in head)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
