"""FoodSpace embedding extraction and the ``.npz`` files test.py writes (SPEC section 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.io import atomic_write

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def thumbnails(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """ImageNet-normalised images (B,3,S,S) -> [0,1] thumbnails (B,3,size,size) on the CPU."""
    images = images.detach().float().cpu() * IMAGENET_STD + IMAGENET_MEAN
    return F.interpolate(images.clamp(0, 1), size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def extract_embeddings(model, loader, device, ctx, *, channels_last=False, tracker=None,
                       thumbs: int = 0, desc: str = "embed") -> dict:
    """Run ``model`` (images, tokens) -> (img_emb, rec_emb) over ``loader`` in eval mode.

    Returns ``img_embeds`` and ``rec_embeds`` float32 (N, D), ``rec_ids`` ``<U10`` (N,), and with
    ``thumbs > 0`` the first ``thumbs`` images as (K,3,32,32) thumbnails. Unreadable images are
    skipped (``tracker.update`` counts them and stops beyond its limit).
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


def save_embeddings(path: str | Path, img_embeds, rec_embeds, rec_ids) -> None:
    """Write the three arrays to ``path`` (``.npz``) atomically, loadable with allow_pickle=False."""
    with atomic_write(path, "wb") as handle:
        np.savez(handle, img_embeds=np.asarray(img_embeds, np.float32),
                 rec_embeds=np.asarray(rec_embeds, np.float32), rec_ids=np.asarray(rec_ids, dtype="<U10"))


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_embeddings` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path} (test.py writes it)")
    with np.load(path, allow_pickle=False) as data:
        missing = {"img_embeds", "rec_embeds", "rec_ids"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        return {key: data[key] for key in ("img_embeds", "rec_embeds", "rec_ids")}
