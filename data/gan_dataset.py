"""``GANDataset``: the recipes of one test.py embedding file with their real image and class (SPEC section 6).

Each sample is a recipe of the embedding file, in its order: its real image as D sees it
(:func:`gan_image`: resize 256, crop 224, flip, resize 128, ImageNet-normalised; training: one of
the first ``max_imgs`` images, random crop and flip; otherwise the first image, centre crop), its
recipe embedding, the precomputed embedding of its *first* image (the target of the image-image
cycle term) and its class, read from the LMDB record (:func:`read_record`). Draws come from
``np.random.default_rng([seed, epoch, index])``, so any worker count gives the same samples. An
unreadable image gives a :class:`data.dataset.BadSample`, which :func:`collate_gan` sets aside;
bad records and classes raise :class:`utils.encoder_run.GANDataError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data.dataset import BadSample
from data.lmdb_format import RecordError, decode_record, lmdb_dir, shared_env
from data.recipe1m import image_path
from data.transforms import ImageLoadError, load_image, to_normalized_tensor
from utils.encoder_run import GANDataError

CROP, RESIZE, GAN_SIZE = 224, 256, 128  # SPEC section 6: resize 256, crop 224, then 128 for D


def gan_image(img, rng: np.random.Generator | None) -> torch.Tensor:
    """SPEC section 6's view of a real image: resize 256 (short side), crop 224 (random with ``rng``,
    else centre), flip (random with ``rng``), resize to 128, ImageNet-normalise -> (3, 128, 128).

    Draw order with ``rng``: crop top, crop left, flip.
    """
    img = TF.resize(img, RESIZE, interpolation=InterpolationMode.BILINEAR, antialias=True)
    w, h = img.size
    if rng is not None:
        top, left = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0)), False
    img = TF.crop(img, top, left, CROP, CROP)
    if flip:
        img = TF.horizontal_flip(img)
    img = TF.resize(img, [GAN_SIZE, GAN_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return to_normalized_tensor(img)  # (3, 128, 128)


def read_record(lmdb_path: Path, rid: str):
    """The LMDB record of recipe ``rid`` (:class:`data.lmdb_format.Record`)."""
    with shared_env(lmdb_path).begin(write=False) as txn:
        value = txn.get(rid.encode("utf-8"))
    if value is None:
        raise GANDataError(f"{lmdb_path}: no record for recipe {rid}")
    try:
        return decode_record(value)
    except RecordError as err:
        raise GANDataError(f"{lmdb_path}: record {rid}: {err}") from None


class GANSample(NamedTuple):
    image: torch.Tensor  # (3, 128, 128) ImageNet-normalised
    rec_emb: torch.Tensor  # (D,)
    img_emb: torch.Tensor  # (D,) the first image's precomputed embedding
    cls: int
    recipe_id: str
    index: int


class GANBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, 128, 128)
    rec_embs: torch.Tensor  # (B, D)
    img_embs: torch.Tensor  # (B, D)
    classes: torch.Tensor  # (B,)
    recipe_ids: list[str]
    indices: torch.Tensor  # (B,) rows of the embedding file
    bad: list[BadSample]


class GANDataset(Dataset):
    """The recipes of one embedding file, in its order, with their real image and class.

    Args:
        data_path, img_path: the LMDB folder and the image root.
        partition: train, val or test.
        emb: test.py's arrays (``img_embeds``, ``rec_embeds``, ``rec_ids``).
        train: random image among the first ``max_imgs`` and random crop/flip; else the first image, centred.
        seed: with the epoch and the index, seeds every draw of a sample (any worker count gives the same).
        max_imgs: see ``train``.
        num_classes: classes must be below it (D's class head).
    """

    def __init__(self, data_path, img_path, partition: str, emb: dict, *, train: bool, seed: int = 1234,
                 max_imgs: int = 5, num_classes: int = 1048) -> None:
        self.data_path, self.img_path, self.partition = Path(data_path), Path(img_path), partition
        self.ids = [str(i) for i in emb["rec_ids"]]
        self.rec = torch.from_numpy(np.ascontiguousarray(emb["rec_embeds"], dtype=np.float32))  # (N, D)
        self.img = torch.from_numpy(np.ascontiguousarray(emb["img_embeds"], dtype=np.float32))  # (N, D)
        self.train, self.seed, self.max_imgs, self.num_classes = bool(train), int(seed), int(max_imgs), num_classes
        self.lmdb_path = lmdb_dir(self.data_path, partition)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, index: int):
        return read_record(self.lmdb_path, self.ids[index])

    def __getitem__(self, index: int) -> GANSample | BadSample:
        rid = self.ids[index]
        record = self.record(index)
        cls = int(record.cls) - 1  # the LMDB stores class + 1
        if not 0 <= cls < self.num_classes:
            raise GANDataError(f"{self.lmdb_path}: record {rid}: class {cls} outside [0, --numClasses "
                               f"{self.num_classes})")
        rng = np.random.default_rng([self.seed, int(self._epoch.item()), index]) if self.train else None
        images = record.images[: self.max_imgs]
        if not images:
            return BadSample(rid, "no image entry in the LMDB record", GAN_SIZE)
        pick = int(rng.integers(len(images))) if rng is not None else 0
        try:
            pil = load_image(image_path(self.img_path, self.partition, images[pick]))
        except (ImageLoadError, ValueError) as err:
            return BadSample(rid, str(err), GAN_SIZE)
        return GANSample(gan_image(pil, rng), self.rec[index], self.img[index], cls, rid, index)


def collate_gan(batch) -> GANBatch:
    """Stack the good samples, set the bad ones aside (an all-bad batch has zero rows)."""
    good = [s for s in batch if isinstance(s, GANSample)]
    bad = [s for s in batch if isinstance(s, BadSample)]
    if not good:
        return GANBatch(torch.zeros(0, 3, GAN_SIZE, GAN_SIZE), torch.zeros(0, 0), torch.zeros(0, 0),
                        torch.zeros(0, dtype=torch.long), [], torch.zeros(0, dtype=torch.long), bad)
    return GANBatch(torch.stack([s.image for s in good]), torch.stack([s.rec_emb for s in good]),
                    torch.stack([s.img_emb for s in good]), torch.tensor([s.cls for s in good]),
                    [s.recipe_id for s in good], torch.tensor([s.index for s in good]), bad)
