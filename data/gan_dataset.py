"""``GANDataset``: the recipes of one test.py embedding file with their real image and class (docs/synthesis.md#the-method).

Each sample is a recipe of the embedding file, in its order: its real image as D sees it
(:func:`gan_image`: resize 256, crop 224, flip, resize 128, ImageNet-normalised; training: one of
the first ``max_imgs`` images, random crop and flip; otherwise the first image, centre crop), its
recipe embedding, the precomputed embedding of its *first* image (the target of the image-image
cycle term) and its class, read from the LMDB record (:func:`read_record`). The embedding file is
test.py's, checked against the LMDB keys by :func:`load_partition_embeddings`. Draws come from
``np.random.default_rng([seed, epoch, index])``, so any worker count gives the same samples. An
unreadable image gives a :class:`data.dataset.BadSample`, which :func:`collate_gan` sets aside;
bad embedding files, records and classes raise :class:`GANDataError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data.dataset import BadSample
from data.lmdb_format import Record, RecordError, RecordReader, keys_file, lmdb_dir
from data.recipe1m import image_path, load_keys
from data.transforms import (
    ImageLoadError,
    check_backend,
    decode_image,
    load_image,
    to_normalized_tensor,
)
from utils.embeddings import load_embeddings
from utils.errors import InputError
from utils.imagenet import normalize_on_device

CROP, RESIZE, GAN_SIZE = 224, 256, 128  # docs/synthesis.md#the-method: resize 256, crop 224, then 128 for D


class GANDataError(InputError):
    """Bad input data (an embedding file that does not match the LMDB, a bad record, a class out of range)."""


def load_partition_embeddings(path: Path, data_path, partition: str) -> dict[str, np.ndarray]:
    """test.py's npz, checked against the LMDB keys of ``partition``.

    Raises:
        GANDataError: no recipes, no keys file, or a recipe the LMDB does not hold.
    """
    emb = load_embeddings(path)
    if len(emb["rec_ids"]) == 0:
        raise GANDataError(f"{path}: no recipes")
    keys = keys_file(data_path, partition)
    if not keys.is_file():
        raise GANDataError(f"{keys} not found: is --data_path {data_path} the folder create_lmdb.py wrote?")
    known = set(load_keys(keys))
    missing = [str(i) for i in emb["rec_ids"] if str(i) not in known]
    if missing:
        raise GANDataError(f"{path}: recipe {missing[0]} (and {len(missing) - 1} more) is not in {keys}; "
                           f"the embeddings were made from another data set")
    return emb


def gan_image(img, rng: np.random.Generator | None) -> torch.Tensor:
    """The view of a real image of docs/synthesis.md#the-method: resize 256 (short side), crop 224 (random with ``rng``,
    else centre), flip (random with ``rng``), resize to 128, ImageNet-normalise -> (3, 128, 128).

    Draw order with ``rng``: crop top, crop left, flip.
    """
    return to_normalized_tensor(gan_image_pil(img, rng))  # (3, 128, 128)


def _crop_draw(h: int, w: int, rng: np.random.Generator | None) -> tuple[int, int, bool]:
    """``(top, left, flip)`` of :func:`gan_image`'s crop in an ``h x w`` image."""
    if rng is not None:
        top, left = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
        return top, left, bool(rng.random() < 0.5)
    return int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0)), False


def gan_image_pil(img, rng: np.random.Generator | None):
    """:func:`gan_image` before the normalisation: the 128 x 128 RGB ``PIL.Image``."""
    img = TF.resize(img, RESIZE, interpolation=InterpolationMode.BILINEAR, antialias=True)
    w, h = img.size
    top, left, flip = _crop_draw(h, w, rng)
    img = TF.crop(img, top, left, CROP, CROP)
    if flip:
        img = TF.horizontal_flip(img)
    return TF.resize(img, [GAN_SIZE, GAN_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)


def gan_image_uint8(arr: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    """The fast :func:`gan_image` on an ``(H, W, 3)`` uint8 array: ``(3, 128, 128)`` uint8, not normalised.

    The same draws; the first resize is torch's uint8 antialiased one (within 1 level of PIL's).
    """
    image = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W) channels-last view: torch's fast uint8 kernel
    image = TF.resize(image, RESIZE, interpolation=InterpolationMode.BILINEAR, antialias=True)
    h, w = image.shape[-2:]
    top, left, flip = _crop_draw(h, w, rng)
    image = image[:, top:top + CROP, left:left + CROP]  # (3, 224, 224)
    if flip:
        image = image.flip(-1)
    # The small second resize stays PIL's: on top of the first one's 1 level, torch's would
    # sometimes add another (max 2 on the bench photos); PIL's keeps the sum within 1.
    crop = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))  # 224 x 224
    small = TF.resize(crop, [GAN_SIZE, GAN_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(small)  # (3, 128, 128) uint8


def load_gan_image(path, rng: np.random.Generator | None, *, backend: str = "pil",
                   uint8: bool = False) -> torch.Tensor:
    """Read an image and make D's view of it (:func:`gan_image`): ``(3, 128, 128)``, uint8 or normalised.

    Raises:
        ImageLoadError: the file is missing or cannot be decoded.
    """
    if check_backend(backend) == "pil":
        image = TF.pil_to_tensor(gan_image_pil(load_image(path), rng))  # (3, 128, 128) uint8
    else:
        image = gan_image_uint8(decode_image(path), rng)
    return image if uint8 else normalize_on_device(image[None])[0]


def read_record(records: RecordReader, rid: str) -> Record:
    """The LMDB record of recipe ``rid``; a missing or malformed one raises :class:`GANDataError`."""
    try:
        record = records.get(rid)
    except RecordError as err:
        raise GANDataError(f"{records.path}: record {rid}: {err}") from None
    if record is None:
        raise GANDataError(f"{records.path}: no record for recipe {rid}")
    return record


class GANSample(NamedTuple):
    image: torch.Tensor  # (3, 128, 128) ImageNet-normalised; uint8 with the dataset's uint8=True
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
        image_backend: ``"pil"`` (the reference's pixels) or ``"fast"`` (within 1 level, faster).
        uint8: images as uint8 (normalised on the device by the step), else ImageNet-normalised float32.
    """

    def __init__(self, data_path, img_path, partition: str, emb: dict, *, train: bool, seed: int = 1234,
                 max_imgs: int = 5, num_classes: int = 1048, image_backend: str = "pil",
                 uint8: bool = False) -> None:
        self.image_backend, self.uint8 = check_backend(image_backend), bool(uint8)
        self.data_path, self.img_path, self.partition = Path(data_path), Path(img_path), partition
        self.ids = [str(i) for i in emb["rec_ids"]]
        self.rec = torch.from_numpy(np.ascontiguousarray(emb["rec_embeds"], dtype=np.float32))  # (N, D)
        self.img = torch.from_numpy(np.ascontiguousarray(emb["img_embeds"], dtype=np.float32))  # (N, D)
        self.train, self.seed, self.max_imgs, self.num_classes = bool(train), int(seed), int(max_imgs), num_classes
        self.lmdb_path = lmdb_dir(self.data_path, partition)
        self._records = RecordReader(self.lmdb_path)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by persistent workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, index: int) -> Record:
        return read_record(self._records, self.ids[index])

    def _class(self, index: int, record: Record) -> int:
        cls = int(record.cls) - 1  # the LMDB stores class + 1
        if not 0 <= cls < self.num_classes:
            raise GANDataError(f"{self.lmdb_path}: record {self.ids[index]}: class {cls} outside [0, --numClasses "
                               f"{self.num_classes})")
        return cls

    def classes(self) -> np.ndarray:
        """``(N,)`` every recipe's class, in order (from the LMDB records; no image is read)."""
        return np.array([self._class(i, self.record(i)) for i in range(len(self))], dtype=np.int64)

    def __getitem__(self, index: int) -> GANSample | BadSample:
        rid = self.ids[index]
        record = self.record(index)
        cls = self._class(index, record)
        rng = np.random.default_rng([self.seed, int(self._epoch.item()), index]) if self.train else None
        images = record.images[: self.max_imgs]
        if not images:
            return BadSample(rid, "no image entry in the LMDB record", GAN_SIZE)
        pick = int(rng.integers(len(images))) if rng is not None else 0
        try:
            image = load_gan_image(image_path(self.img_path, self.partition, images[pick]), rng,
                                   backend=self.image_backend, uint8=self.uint8)  # (3, 128, 128)
        except (ImageLoadError, ValueError) as err:
            return BadSample(rid, str(err), GAN_SIZE)
        return GANSample(image, self.rec[index], self.img[index], cls, rid, index)


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
