"""The fast image path (``--image_backend fast``) against today's PIL path.

Pixels: within 1 level (uint8, before normalisation) of the PIL path for the same drawn
parameters, padding modes, rotations, flips and aspect ratios included. Decoding: bit-equal to
:func:`data.transforms.load_image`, and every file it refuses or repairs is refused or repaired the
same way (truncated, corrupt, missing, alpha, palette, CMYK, grayscale, 16-bit, EXIF orientation,
decompression bombs). ``--image_backend pil`` gives today's values bit for bit, and the device
normalisation equals the float path's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data.gan_dataset import gan_image, gan_image_pil, gan_image_uint8, load_gan_image
from data.transforms import (
    PAD_MODES,
    ImageLoadError,
    TrainParams,
    _decode_plain_jpeg,
    _padded_square,
    decode_image,
    draw_train_params,
    eval_transform,
    eval_transform_pil,
    eval_transform_uint8,
    load_image,
    load_transformed,
    pad_to_square,
    pad_to_square_array,
    to_normalized_tensor,
    train_transform,
    train_transform_pil,
    train_transform_uint8,
)
from utils.imagenet import normalize_on_device


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB image: shaded background, soft blobs with edges, sensor noise, JPEG q90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([120 + 80 * xx, 90 + 60 * yy, 60 + 100 * xx * yy], -1)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.integers(0, w), rng.integers(0, h)
        r = int(rng.integers(3, max(4, min(h, w) // 3)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return np.array(Image.open(buf).convert("RGB"))


SHAPES = [(300, 300), (480, 640), (640, 480), (37, 300), (300, 37), (20, 20), (24, 31), (1, 40), (500, 3)]


def max_diff(a, b) -> int:
    a = np.asarray(a.permute(1, 2, 0) if isinstance(a, torch.Tensor) else a, dtype=np.int16)
    b = np.asarray(b.permute(1, 2, 0) if isinstance(b, torch.Tensor) else b, dtype=np.int16)
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


# ------------------------------------------------------------------ pixels: within 1 level

def test_pad_to_square_array_equals_torchvision_pad():
    rng = np.random.default_rng(0)
    for h, w in [(10, 4), (4, 10), (2, 50), (50, 2), (1, 9), (9, 1), (3, 8), (8, 3), (7, 5), (1, 1), (6, 6), (100, 37)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for mode in PAD_MODES:  # slices where the pad fits, np.pad (repeated reflection) where not
            assert np.array_equal(pad_to_square_array(arr, mode), np.asarray(pad_to_square(Image.fromarray(arr), mode)))
    with pytest.raises(ValueError, match="unknown pad mode"):
        pad_to_square_array(arr, "wrap")


def test_padded_square_equals_padding_then_resizing():
    """The wide-image shortcut (columns pass before the padding) gives the one-call pixels bit for bit."""
    for k, (h, w) in enumerate([(480, 640), (37, 300), (1, 40), (2, 50), (300, 37), (300, 300), (24, 31)]):
        arr = photo(h, w, seed=30 + k)
        for mode in PAD_MODES:  # (1, 40) and (2, 50) reflect past the image: np.pad's repeated reflection
            for side in (256, 37):
                padded = torch.from_numpy(pad_to_square_array(arr, mode)).permute(2, 0, 1)
                whole = TF.resize(padded, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=True)
                assert np.array_equal(_padded_square(arr, mode, side), whole.permute(1, 2, 0).numpy()), (h, w, mode)
    with pytest.raises(ValueError, match="unknown pad mode"):
        _padded_square(photo(20, 40, seed=0), "wrap", 16)


@pytest.mark.parametrize("size", [224, 32])
def test_train_and_eval_within_one_level(size):
    rng = np.random.default_rng(size)
    for k, (h, w) in enumerate(SHAPES):
        arr = photo(h, w, seed=k)
        img = Image.fromarray(arr)
        assert max_diff(eval_transform_uint8(arr, size), eval_transform_pil(img, size)) <= 1
        params = [draw_train_params(rng, size) for _ in range(4)]
        # Every padding mode, both flips, both ends of the angle range.
        params += [TrainParams(True, mode, angle, 0, resize_slack(size), bool(i % 2))
                   for i, (mode, angle) in enumerate(zip(PAD_MODES, (-10.0, 10.0, 0.0, 7.3)))]
        params.append(TrainParams(False, "edge", -4.2, resize_slack(size), 0, True))
        for p in params:
            fast = train_transform_uint8(arr, p, size)
            assert fast.shape == (3, size, size) and fast.dtype == torch.uint8
            assert max_diff(fast, train_transform_pil(img, p, size)) <= 1, (h, w, p)


def resize_slack(size: int) -> int:
    return int(round(size * 256 / 224)) - size


def test_gan_view_within_one_level():
    for k, (h, w) in enumerate([(300, 300), (480, 640), (900, 230), (224, 224), (231, 500)]):
        arr = photo(h, w, seed=10 + k)
        for seed in (None, 1, 2, 3):
            fast = gan_image_uint8(arr, np.random.default_rng(seed) if seed else None)
            pil = gan_image_pil(Image.fromarray(arr), np.random.default_rng(seed) if seed else None)
            assert fast.shape == (3, 128, 128) and max_diff(fast, pil) <= 1


# ------------------------------------------------------------------ pil backend and normalisation: exact

def test_normalize_on_device_equals_float_path():
    img = Image.fromarray(photo(50, 70, seed=3))
    uint8 = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    assert torch.equal(normalize_on_device(uint8)[0], to_normalized_tensor(img))
    assert normalize_on_device(uint8).dtype == torch.float32
    floats = torch.randn(2, 3, 4, 4)
    assert normalize_on_device(floats) is floats  # already normalised: untouched


def test_pil_backend_is_todays_path_bit_for_bit(tmp_path):
    rng = np.random.default_rng(7)
    for k, (h, w) in enumerate(SHAPES[:5]):
        path = tmp_path / f"{k}.jpg"
        Image.fromarray(photo(h, w, seed=k)).save(path, quality=90)
        for size in (224, 32):
            params = draw_train_params(rng, size)
            old_train = train_transform(load_image(path), params, size)
            old_eval = eval_transform(load_image(path), size)
            assert torch.equal(load_transformed(path, params, size, backend="pil"), old_train)
            assert torch.equal(load_transformed(path, None, size, backend="pil"), old_eval)
            u8 = load_transformed(path, params, size, backend="pil", uint8=True)
            assert u8.dtype == torch.uint8 and torch.equal(normalize_on_device(u8[None])[0], old_train)
            fast = load_transformed(path, params, size, backend="fast")  # normalised on the CPU
            assert fast.dtype == torch.float32 and (fast - old_train).abs().max() <= 1 / 255 / 0.224 + 1e-6
        gan_old = gan_image(load_image(path), np.random.default_rng(k))
        assert torch.equal(load_gan_image(path, np.random.default_rng(k), backend="pil"), gan_old)
    with pytest.raises(ValueError, match="unknown image backend"):
        load_transformed(path, None, 32, backend="cv2")


# ------------------------------------------------------------------ decoding: each case as load_image

def save(path: Path, img: Image.Image, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def same_outcome(path: Path) -> np.ndarray | str:
    """decode_image and load_image agree on ``path``: the same pixels, or the same error."""
    try:
        want = np.asarray(load_image(path))
    except ImageLoadError as err:
        with pytest.raises(ImageLoadError) as got:
            decode_image(path)
        assert str(got.value) == str(err)
        return str(err)
    got = decode_image(path)
    assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), path.name
    return got


def test_decode_jpeg_bit_equal_and_taken_by_opencv(tmp_path):
    arr = photo(120, 90, seed=1)
    for name, kwargs in (("444", {"subsampling": 0}), ("422", {"subsampling": 1}), ("420", {"subsampling": 2}),
                         ("progressive", {"progressive": True}), ("q60", {"quality": 60})):
        path = save(tmp_path / f"{name}.jpg", Image.fromarray(arr), **{"quality": 90, **kwargs})
        assert _decode_plain_jpeg(path.read_bytes()) is not None  # decode_jpeg, not the PIL fallback
        same_outcome(path)
    gray = save(tmp_path / "gray.jpg", Image.fromarray(arr[..., 1]), quality=90)  # mode L
    assert _decode_plain_jpeg(gray.read_bytes()) is not None
    out = same_outcome(gray)
    assert (out[..., 0] == out[..., 2]).all()
    # Bytes after the end marker: PIL reads them fine; the fast decoder leaves the file to PIL.
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes((tmp_path / "420.jpg").read_bytes() + b"\x00" * 7)
    same_outcome(trailing)


def test_decode_other_modes_as_load_image(tmp_path):
    arr = photo(40, 30, seed=2)
    cmyk = np.zeros((30, 40, 4), np.uint8)
    cmyk[:, :20, 0], cmyk[:, 20:, 3] = 255, 128
    rgba = np.concatenate([arr, np.full((40, 30, 1), 60, np.uint8)], -1)
    pal = Image.fromarray(arr).convert("P")
    cases = {
        "cmyk.jpg": (Image.frombytes("CMYK", (40, 30), cmyk.tobytes()), {"quality": 95}),
        "gray.png": (Image.fromarray(arr[..., 0]), {}),
        "rgb.png": (Image.fromarray(arr), {}),
        "rgba.png": (Image.fromarray(rgba), {}),
        "palette.png": (pal, {}),
        "palette_transparent.png": (pal, {"transparency": 0}),
        "gray16.png": (Image.fromarray(arr[..., 0].astype(np.uint16) * 257), {}),
        "la.png": (Image.fromarray(arr[..., 0]).convert("LA"), {}),
    }
    for name, (img, kwargs) in cases.items():
        out = same_outcome(save(tmp_path / name, img, **kwargs))
        assert out.ndim == 3 and out.shape[2] == 3
    assert _decode_plain_jpeg((tmp_path / "cmyk.jpg").read_bytes()) is None  # CMYK: PIL's conversion


def _exif_block(orientation: int, order: str) -> bytes:
    """A TIFF block with IFD0 = one Orientation SHORT, in byte ``order`` ("II" or "MM")."""
    end = "little" if order == "II" else "big"
    magic = (42).to_bytes(2, end)
    entry = (0x0112).to_bytes(2, end) + (3).to_bytes(2, end) + (1).to_bytes(4, end) + orientation.to_bytes(2, end) + b"\0\0"
    return b"Exif\0\0" + order.encode() + magic + (8).to_bytes(4, end) + (1).to_bytes(2, end) + entry + b"\0" * 4


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` right after the start marker."""
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_fast_header_reader_agrees_with_pil(tmp_path):
    """The fast path's own header reader takes a file only when PIL would open it as plain RGB or L."""
    from data.transforms import _plain_jpeg_header

    img = Image.fromarray(photo(30, 50, seed=6))
    plain = save(tmp_path / "p.jpg", img, quality=90).read_bytes()
    cmyk = save(tmp_path / "c.jpg", img.convert("CMYK"), quality=90).read_bytes()
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description tiff:Orientation=\"6\"/></x:xmpmeta>"
    cases = {
        "plain": plain,
        "progressive": save(tmp_path / "g.jpg", img, quality=90, progressive=True).read_bytes(),
        "gray": save(tmp_path / "l.jpg", img.convert("L"), quality=90).read_bytes(),
        "subsampling 4:4:4": save(tmp_path / "s.jpg", img, quality=90, subsampling=0).read_bytes(),
        "cmyk": cmyk,
        **{f"exif {o} {order}": _with_app1(plain, _exif_block(o, order)) for o in (1, 3, 6) for order in ("II", "MM")},
        "xmp orientation": _with_app1(plain, xmp),
        "malformed exif": _with_app1(plain, b"Exif\0\0II*\0\xff\xff\xff\x7f"),
        "two frames' worth of size": plain.replace(b"\xff\xc0\x00\x11\x08\x00\x1e\x00\x32",
                                                     b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff"),
    }
    taken = set()
    for name, data in cases.items():
        header = _plain_jpeg_header(data)
        if header is None:
            continue
        taken.add(name)
        with Image.open(io.BytesIO(data)) as pil:  # what load_image would see
            assert pil.mode in ("RGB", "L") and header == pil.size, name
            assert pil.getexif().get(0x0112, 1) in (0, 1), name
    # The plain cases take the fast path; rotations, XMP, CMYK, bad EXIF and a bomb-sized frame do not.
    assert taken == {"plain", "progressive", "gray", "subsampling 4:4:4", "exif 1 II", "exif 1 MM"}, taken


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_exif_orientation_as_load_image(tmp_path, orientation):
    img = Image.fromarray(photo(20, 40, seed=4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / f"o{orientation}.jpg", img, exif=exif.tobytes(), quality=95)
    out = same_outcome(path)
    assert out.shape[:2] == ((40, 20) if orientation >= 5 else (20, 40))  # 5..8 swap the sides


def test_decode_refuses_what_load_image_refuses(tmp_path, monkeypatch):
    data = (save(tmp_path / "ok.jpg", Image.fromarray(photo(64, 64, seed=5)), quality=90)).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    assert "truncated" in same_outcome(truncated)
    # Decoders may pad a truncated JPEG with grey instead of failing (OpenCV does): the end-marker
    # check keeps such a file away from the fast decoder, whatever it would do with it.
    import data.transforms as transforms

    grey = lambda *args, **kwargs: torch.full((3, 64, 64), 128, dtype=torch.uint8)  # noqa: E731
    monkeypatch.setattr(transforms, "decode_jpeg", grey)
    assert _decode_plain_jpeg(truncated.read_bytes()) is None
    assert "truncated" in same_outcome(truncated)
    monkeypatch.undo()
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    assert "cannot identify" in same_outcome(garbage)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    same_outcome(empty)
    header_only = tmp_path / "header.jpg"
    header_only.write_bytes(data[:200] + b"\xff\xd9")  # ends with the marker, no scan data
    same_outcome(header_only)
    assert "missing" in same_outcome(tmp_path / "nothing_here.jpg")
    folder = tmp_path / "a_folder.jpg"
    folder.mkdir()
    assert "missing" in same_outcome(folder)
    # Corrupt scan data with the end marker intact: the same pixels or the same error, every time.
    rng = np.random.default_rng(0)
    for k in range(12):
        bad = bytearray(data)
        for pos in rng.integers(len(bad) // 3, len(bad) - 4, size=3):
            bad[int(pos)] = int(rng.integers(256))
        path = tmp_path / f"corrupt{k}.jpg"
        path.write_bytes(bytes(bad))
        same_outcome(path)
    # Decompression bombs: PIL's limit applies to the fast path too (it reads the header first).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
    assert "DecompressionBomb" in same_outcome(tmp_path / "ok.jpg")


def test_fast_path_errors_name_the_file(tmp_path):
    path = tmp_path / "missing.jpg"
    for call in (lambda: load_transformed(path, None, 32, backend="fast"),
                 lambda: load_gan_image(path, None, backend="fast")):
        with pytest.raises(ImageLoadError, match="missing image file .*missing.jpg"):
            call()
