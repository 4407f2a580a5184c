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
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from utils.cli import IMAGE_BACKENDS
from utils.imagenet import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device

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
    return to_normalized_tensor(train_transform_pil(img, params, image_size))


def train_transform_pil(img: Image.Image, params: TrainParams, image_size: int = 224) -> Image.Image:
    """:func:`train_transform` before the normalisation: the ``S x S`` RGB ``PIL.Image``."""
    side = _check_crop(params, image_size)
    if params.pad_to_square:
        img = pad_to_square(img, params.pad_mode)
    img = _resize_square(img, side)  # (R, R)
    img = F.rotate(img, params.angle, interpolation=InterpolationMode.NEAREST, fill=0)
    img = F.crop(img, params.top, params.left, image_size, image_size)  # (S, S)
    if params.flip:
        img = F.horizontal_flip(img)
    return img


def _check_crop(params: TrainParams, image_size: int) -> int:
    """``R`` for ``image_size``; refuses a crop offset that leaves the ``R x R`` image."""
    side = resize_size(image_size)
    if params.top + image_size > side or params.left + image_size > side:
        raise ValueError(f"crop offset ({params.top}, {params.left}) does not fit image_size {image_size}")
    return side


def eval_transform(img: Image.Image, image_size: int = 224) -> torch.Tensor:
    """Pad to square (reflect), resize to ``R x R``, centre crop ``S x S``, normalise.

    Returns:
        float32 tensor ``(3, S, S)``.
    """
    return to_normalized_tensor(eval_transform_pil(img, image_size))


def eval_transform_pil(img: Image.Image, image_size: int = 224) -> Image.Image:
    """:func:`eval_transform` before the normalisation: the ``S x S`` RGB ``PIL.Image``."""
    side = resize_size(image_size)
    img = _resize_square(pad_to_square(img, "reflect"), side)
    offset = _centre_offset(side, image_size)
    return F.crop(img, offset, offset, image_size, image_size)


def _centre_offset(side: int, size: int) -> int:
    """Offset of a centred ``size`` crop in ``side`` (torchvision's CenterCrop rule)."""
    return int(round((side - size) / 2.0))


# --------------------------------------------------------------------------- the fast path
#
# The same transforms on uint8 arrays, about twice as fast per core (bench/loader.py): the decode
# goes through torchvision's decode_jpeg for plain JPEGs, padding is array slicing, the resizes are torch's uint8
# antialiased bilinear kernel, and the rotation stays PIL's (torch's nearest rotation is slower
# and differs at tie points). Every pixel is within 1 level of the PIL path's for the same drawn
# parameters (tests/test_fast_images.py); normalisation is left to the device
# (:func:`utils.imagenet.normalize_on_device`). ``image_backend="pil"`` keeps today's pixels.

_EXIF_ORIENTATION = 0x0112
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`IMAGE_BACKENDS`, else ValueError."""
    if backend not in IMAGE_BACKENDS:
        raise ValueError(f"unknown image backend {backend!r}; use one of {', '.join(IMAGE_BACKENDS)}")
    return backend


def decode_image(path: str | Path) -> np.ndarray:
    """The pixels :func:`load_image` gives, as an ``(H, W, 3)`` uint8 RGB array, decoded faster.

    A plain JPEG (8-bit RGB or grayscale, complete, no EXIF rotation) is decoded by torchvision's
    ``decode_jpeg`` (libjpeg-turbo straight into an array: PIL's pixels bit for bit, without PIL's
    4-byte pixels and copies); everything else (PNG, palette, CMYK, 16-bit, alpha, EXIF orientation,
    anything ``decode_jpeg`` refuses, a file that does not end with the JPEG end marker) goes
    through :func:`load_image`, so what it refuses or repairs is refused or repaired the same way.
    The end-marker check keeps truncated files away from decoders that pad them with grey (OpenCV
    does) or warn instead of failing. A frame larger than PIL's ``MAX_IMAGE_PIXELS`` also goes to
    :func:`load_image`, so PIL's decompression-bomb rule applies to both paths.

    Raises:
        ImageLoadError: as :func:`load_image` (missing, truncated, undecodable, too large).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        data = b""  # missing or unreadable: load_image raises the usual error
    arr = _decode_plain_jpeg(data) if data else None
    if arr is None:
        arr = np.array(load_image(path))  # (H, W, 3) uint8, writable
    return arr


def _decode_plain_jpeg(data: bytes) -> np.ndarray | None:
    """``data`` decoded by ``decode_jpeg`` when it is a plain JPEG (see :func:`decode_image`), else None."""
    if not (data.startswith(_JPEG_SOI) and data.endswith(_JPEG_EOI)):
        return None  # not a JPEG, or cut short (OpenCV would pad it with grey)
    header = _plain_jpeg_header(data)
    if header is None:
        return None
    width, height = header
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:  # noqa: BLE001 - whatever the decoder makes of it, load_image says it the usual way
        return None
    if image.dtype != torch.uint8 or tuple(image.shape) != (3, height, width):
        return None
    return image.permute(1, 2, 0).numpy()  # (H, W, 3): libjpeg's own rows, no copy


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _plain_jpeg_header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG that PIL would open as 8-bit RGB or L with no rotation to apply.

    Reads the markers before the scan, as PIL's header parser does, without PIL's per-file cost
    (a few percent of the whole decode): the frame header (8 bits, 1 or 3 components), and the
    orientation in the EXIF block or in XMP (where ``Image.getexif`` also looks). Anything else,
    or anything it cannot read for certain, is None: :func:`load_image` then decides, as before.
    A frame over PIL's ``MAX_IMAGE_PIXELS`` is None too, so PIL's decompression-bomb rule applies.
    """
    pos, size, exif_seen = 2, None, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _SOF_MARKERS:
            if size is not None or len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3):
                return None  # a second frame, 12/16-bit samples, or CMYK/YCCK (PIL converts those)
            size = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if exif_seen or _exif_orientation(segment[6:]) not in (0, 1):
                return None
            exif_seen = True
        elif marker == 0xE1 and b"Orientation" in segment:
            return None  # XMP with an orientation: PIL's getexif reads it
        pos += 2 + length
    if size is None or size[0] * size[1] > Image.MAX_IMAGE_PIXELS or min(size) == 0:
        return None
    return size


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation entry of IFD0 of a TIFF block (0 when absent), None when the block is malformed."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    entries = tiff[ifd + 2:ifd + 2 + 12 * count]
    if len(entries) != 12 * count:
        return None
    for k in range(count):
        entry = entries[12 * k:12 * k + 12]
        if int.from_bytes(entry[0:2], order) == _EXIF_ORIENTATION:
            if int.from_bytes(entry[2:4], order) != 3 or int.from_bytes(entry[4:8], order) != 1:
                return None  # not one SHORT: let PIL decide
            return int.from_bytes(entry[8:10], order)
    return 0


def pad_to_square_array(arr: np.ndarray, mode: str) -> np.ndarray:
    """:func:`pad_to_square` on an ``(H, W, C)`` array, the same pixels (torchvision pads with np.pad)."""
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; use one of {', '.join(PAD_MODES)}")
    h, w = arr.shape[:2]
    pad = abs(w - h)
    if pad == 0:
        return arr
    return _pad_axis(arr, 1 if w < h else 0, pad // 2, pad - pad // 2, mode)  # a tall image's columns, a wide one's rows


def _pad_axis(arr: np.ndarray, axis: int, before: int, after: int, mode: str) -> np.ndarray:
    """``arr`` padded along ``axis`` (0 or 1) as np.pad pads it.

    Slices where the padding fits in the image (the usual case, a few times faster than np.pad);
    np.pad, which repeats the reflection, where it does not.
    """
    n = arr.shape[axis]

    def at(index: slice) -> tuple:  # index along the padded axis
        return (slice(None), index) if axis == 1 else (index,)

    reach = n - 1 if mode == "reflect" else n  # reflect skips the edge itself
    if mode in ("reflect", "symmetric") and max(before, after) > reach:
        widths = [(0, 0)] * arr.ndim
        widths[axis] = (before, after)
        return np.pad(arr, widths, mode)
    shape = list(arr.shape)
    shape[axis] = before + n + after
    out = np.empty(shape, arr.dtype)
    out[at(slice(before, before + n))] = arr
    rev = arr[at(slice(None, None, -1))]  # rev[i] = arr[n - 1 - i] along the axis
    head, tail = at(slice(0, before)), at(slice(before + n, None))
    if mode == "constant":
        out[head] = 0
        out[tail] = 0
    elif mode == "edge":
        out[head] = arr[at(slice(0, 1))]
        out[tail] = arr[at(slice(n - 1, n))]
    elif mode == "reflect":  # before the image arr[before - j]; after it arr[n - 2 - k]
        out[head] = rev[at(slice(n - 1 - before, n - 1))]
        out[tail] = rev[at(slice(1, 1 + after))]
    else:  # symmetric: before the image arr[before - 1 - j]; after it arr[n - 1 - k]
        out[head] = rev[at(slice(n - before, n))]
        out[tail] = rev[at(slice(0, after))]
    return out


def _padded_square(arr: np.ndarray, mode: str, side: int) -> np.ndarray:
    """``pad_to_square_array(arr, mode)`` resized to ``(side, side, 3)``, the same pixels, cheaper for wide images.

    torch resizes in two passes, columns then rows, rounding to uint8 between them (two calls give
    the one call's pixels bit for bit). A wide image is padded with rows, and the first pass treats
    each row alone, so it runs on the unpadded rows and the padding is added to its ``(H, side)``
    result: a quarter of the rows to pad at most, and no pass over the padded full-size image.
    """
    h, w = arr.shape[:2]
    if w <= h:  # square, or a tall one whose padding is columns: the first pass needs them
        return _hwc(_resize_uint8(pad_to_square_array(arr, mode), [side, side]))
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; use one of {', '.join(PAD_MODES)}")
    rows = _hwc(_resize_uint8(arr, [h, side]))  # (H, side, 3): the columns pass
    pad = w - h
    return _hwc(_resize_uint8(_pad_axis(rows, 0, pad // 2, pad - pad // 2, mode), [side, side]))  # rows pass


def _resize_uint8(arr: np.ndarray, size: list[int]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, h, w)`` uint8 (channels-last strides), antialiased bilinear.

    torch's uint8 kernel (fast on channels-last input) gives PIL's pixels within 1 level.
    """
    image = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W), a view with channels-last strides
    return F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def _hwc(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` uint8 tensor -> ``(H, W, 3)`` contiguous array (a view when channels-last)."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def to_uint8_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 array (any strides) -> ``(3, H, W)`` uint8 tensor with channels-last strides.

    One copy (the pixels stay interleaved, as decoded): a batch of them stacks to a channels-last
    batch, the memory format the model runs in by default.
    """
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # PIL's read-only buffer: torch wants memory it may own
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1)


def train_transform_uint8(arr: np.ndarray, params: TrainParams, image_size: int = 224) -> torch.Tensor:
    """The fast :func:`train_transform`: ``(H, W, 3)`` uint8 RGB -> ``(3, S, S)`` uint8, not normalised.

    Within 1 level of :func:`train_transform_pil` for the same ``params``.
    """
    side = _check_crop(params, image_size)
    if params.pad_to_square:
        square = _padded_square(arr, params.pad_mode, side)  # (R, R, 3)
    else:
        square = _hwc(_resize_uint8(arr, [side, side]))
    # PIL's rotation as torchvision's F.rotate calls it (nearest, black fill), then the crop in PIL.
    rotated = Image.fromarray(square).rotate(params.angle, Image.NEAREST, fillcolor=(0, 0, 0))
    box = (params.left, params.top, params.left + image_size, params.top + image_size)
    out = rotated.crop(box)
    if params.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)  # in PIL: a reversed-stride copy in numpy costs 3x more
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)  # (3, S, S), channels-last strides, one copy


def eval_transform_uint8(arr: np.ndarray, image_size: int = 224) -> torch.Tensor:
    """The fast :func:`eval_transform`: ``(H, W, 3)`` uint8 RGB -> ``(3, S, S)`` uint8, not normalised."""
    side = resize_size(image_size)
    square = _padded_square(arr, "reflect", side)  # (R, R, 3)
    offset = _centre_offset(side, image_size)
    return to_uint8_tensor(square[offset:offset + image_size, offset:offset + image_size])


def load_transformed(path: str | Path, params: TrainParams | None, image_size: int = 224, *,
                     backend: str = "pil", uint8: bool = False) -> torch.Tensor:
    """Read an image and apply the train (``params``) or eval (``None``) transform.

    Args:
        path: the image file.
        params: from :func:`draw_train_params`, or None for the evaluation transform.
        image_size: side ``S``.
        backend: ``"pil"`` (today's pixels) or ``"fast"`` (within 1 level, about twice as fast).
        uint8: return ``(3, S, S)`` uint8 (normalise on the device); else ImageNet-normalised float32.

    Raises:
        ImageLoadError: the file is missing or cannot be decoded.
    """
    if check_backend(backend) == "pil":
        img = load_image(path)
        img = train_transform_pil(img, params, image_size) if params is not None else eval_transform_pil(img, image_size)
        image = F.pil_to_tensor(img)  # (3, S, S) uint8
    else:
        arr = decode_image(path)
        image = train_transform_uint8(arr, params, image_size) if params is not None else eval_transform_uint8(arr, image_size)
    return image if uint8 else normalize_on_device(image[None])[0]
