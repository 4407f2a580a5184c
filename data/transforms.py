"""Image loading and the train/eval image transforms of docs/model.md, driven by explicit RNGs.

Every random choice of the training transform is drawn up front by :func:`draw_train_params`
from a ``numpy.random.Generator`` the caller owns (the dataset seeds one per ``(seed, epoch,
index)``), so an augmented image depends on nothing else: not on the worker that made it, not on
torch's or numpy's global state, not on what was loaded before.

Training transform (the reference's, with ``R = round(image_size * 256 / 224)``, ``S =
image_size``):

1. with probability 1/2 pad to a square (mode drawn uniformly from constant 0, edge, reflect,
   symmetric; the padding split as the reference's ``PadToSquareResize``: ``pad // 2`` before,
   the rest after) then resize to ``R x R``; otherwise resize straight to ``R x R`` (aspect lost);
2. rotate by an angle uniform in [-10, 10] degrees, same size, black fill, nearest-neighbour
   sampling (torchvision's ``RandomRotation`` default, used by the reference);
3. crop ``S x S`` at a uniformly drawn position;
4. flip horizontally with probability 1/2;
5. scale to [0, 1] and normalise with the ImageNet mean and standard deviation.

Evaluation transform: pad to a square (reflect), resize to ``R x R``, centre crop ``S x S``,
normalise. Resizing is bilinear with antialiasing (torchvision's ``Resize`` default on PIL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

PAD_MODES = ("constant", "edge", "reflect", "symmetric")
MAX_ROTATION = 10.0  # degrees, either way


class ImageLoadError(OSError):
    """An image file that is missing, truncated or not decodable; the message names the file."""


def resize_size(image_size: int) -> int:
    """Side of the square resize before cropping ``image_size`` (256 for 224, as the reference)."""
    return int(round(image_size * 256 / 224))


def load_image(path: str | Path) -> Image.Image:
    """Load an image as 8-bit RGB with its EXIF orientation applied.

    The pixels are fully decoded here, so a truncated or corrupt file fails now rather than
    inside a transform. Grayscale, CMYK, palette, 16-bit and alpha images become RGB (alpha is
    dropped, keeping the stored colours).

    Args:
        path: the image file.

    Returns:
        An RGB ``PIL.Image``.

    Raises:
        ImageLoadError: the file is missing or cannot be decoded (message names file and cause).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"missing image file {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: truncated data raises here
            img = _apply_exif_orientation(img, path)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # UnidentifiedImageError and "image file is truncated" are OSErrors.
        raise ImageLoadError(f"unreadable image file {path} ({type(err).__name__}: {err})") from None


def _apply_exif_orientation(img: Image.Image, path: Path) -> Image.Image:
    """Rotate/flip ``img`` as its EXIF Orientation tag says (the reference never did; docs/differences.md)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:
        # The pixels decoded fine; only the metadata is bad (a malformed EXIF block must not
        # lose the image), so keep the image as stored.
        logger.debug("ignoring malformed EXIF of %s: %s", path, err)
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16/32-bit grayscale: PIL's convert clips to 255 (a white image); rescale to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        arr = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # 2-D uint8 -> mode "L" -> RGB
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL asks for this route for palettes with transparency
    return img.convert("RGB")


@dataclass(frozen=True)
class TrainParams:
    """Every random choice of one training transform."""

    pad_to_square: bool  # else resize straight to R x R
    pad_mode: str  # one of PAD_MODES (used only when pad_to_square)
    angle: float  # degrees, counter-clockwise
    top: int  # crop offset in the R x R image
    left: int
    flip: bool  # horizontal


def draw_train_params(rng: np.random.Generator, image_size: int = 224) -> TrainParams:
    """Draw the parameters of one training transform from ``rng``.

    Always makes the same number of draws in the same order, so the rest of a caller's stream
    does not depend on the branch taken.
    """
    slack = resize_size(image_size) - image_size
    pad_to_square = bool(rng.random() < 0.5)
    pad_mode = PAD_MODES[int(rng.integers(len(PAD_MODES)))]
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    top = int(rng.integers(0, slack + 1))
    left = int(rng.integers(0, slack + 1))
    flip = bool(rng.random() < 0.5)
    return TrainParams(pad_to_square, pad_mode, angle, top, left, flip)


def pad_to_square(img: Image.Image, mode: str) -> Image.Image:
    """Pad the short side to make ``img`` square: ``pad // 2`` before, the rest after.

    ``mode`` is one of :data:`PAD_MODES`; ``constant`` pads with black. Reflection works even
    when the padding exceeds the image (numpy repeats the reflection).
    """
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; use one of {', '.join(PAD_MODES)}")
    w, h = img.size
    pad = abs(w - h)
    if pad == 0:
        return img
    before, after = pad // 2, pad - pad // 2
    padding = [before, 0, after, 0] if w < h else [0, before, 0, after]  # left, top, right, bottom
    return F.pad(img, padding, fill=0, padding_mode=mode)


def _resize_square(img: Image.Image, side: int) -> Image.Image:
    return F.resize(img, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=True)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float32 tensor ``(3, H, W)`` normalised with ImageNet statistics."""
    tensor = F.pil_to_tensor(img)  # (3, H, W) uint8
    tensor = F.to_dtype(tensor, torch.float32, scale=True)
    return F.normalize(tensor, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def train_transform(img: Image.Image, params: TrainParams, image_size: int = 224) -> torch.Tensor:
    """Apply the training transform with the given parameters.

    Args:
        img: an RGB image of any size.
        params: from :func:`draw_train_params` with the same ``image_size``.
        image_size: side ``S`` of the output.

    Returns:
        float32 tensor ``(3, S, S)``.
    """
    side = resize_size(image_size)
    if params.top + image_size > side or params.left + image_size > side:
        raise ValueError(f"crop offset ({params.top}, {params.left}) does not fit image_size {image_size}")
    if params.pad_to_square:
        img = pad_to_square(img, params.pad_mode)
    img = _resize_square(img, side)  # (R, R)
    img = F.rotate(img, params.angle, interpolation=InterpolationMode.NEAREST, fill=0)
    img = F.crop(img, params.top, params.left, image_size, image_size)  # (S, S)
    if params.flip:
        img = F.horizontal_flip(img)
    return to_normalized_tensor(img)


def eval_transform(img: Image.Image, image_size: int = 224) -> torch.Tensor:
    """Pad to square (reflect), resize to ``R x R``, centre crop ``S x S``, normalise.

    Returns:
        float32 tensor ``(3, S, S)``.
    """
    side = resize_size(image_size)
    img = _resize_square(pad_to_square(img, "reflect"), side)
    offset = int(round((side - image_size) / 2.0))  # torchvision's CenterCrop rule
    img = F.crop(img, offset, offset, image_size, image_size)
    return to_normalized_tensor(img)
