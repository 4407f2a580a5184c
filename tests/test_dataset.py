"""RecipeImageDataset, collate_skip_bad, BadImageTracker and the image transforms.

Everything is built here: a tiny LMDB written with ``encode_record`` (known token / part rows in
several languages), ``manifest.json``, a keys file and real JPEG / PNG images, among them a
grayscale, a CMYK, an RGBA, a 16-bit, an EXIF-rotated, a missing, a truncated and a garbage one.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections import Counter
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from data.dataset import (
    BadImageLimitError,
    BadImageTracker,
    BadSample,
    Batch,
    DatasetError,
    EmptyPartitionError,
    ImageRootError,
    RecipeImageDataset,
    Sample,
    assemble_tokens,
    check_image_root,
    check_partition,
    collate_skip_bad,
    language_distribution,
    parse_textinputs,
)
from data.langs import LANGS
from data.lmdb_format import MANIFEST, Record, RecordError, RecordReader, encode_record, keys_file, lmdb_dir
from data.recipe1m import image_path, write_keys
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLoadError,
    TrainParams,
    eval_transform,
    load_image,
    pad_to_square,
    resize_size,
    train_transform,
)
from utils.errors import InputError

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
MAX_LEN = 16
S = 32  # image_size used by the dataset tests (resize 37)
PART = "train"
# (n_title, n_ingr, n_inst) per recipe; recipe 5 fills the 16-token row exactly (1 + 4 + 6 + 5).
LENGTHS = [(2, 3, 2), (1, 2, 3), (2, 2, 2), (3, 1, 1), (1, 1, 1), (4, 6, 5), (2, 2, 2), (2, 2, 2),
           (2, 2, 2), (2, 2, 2)]
KINDS = ["rgb3", "gray", "cmyk", "rgba", "exif", "rgb", "missing", "truncated", "garbage", "none"]
BAD = {6, 7, 8, 9}


def rid(i: int) -> str:
    return f"{i:02d}ab{i:06x}"


def token(lang: int, part: int, i: int, j: int) -> int:
    """Unique id telling language, part, recipe and position: lang = token // 100000 - 1."""
    return 100000 * (lang + 1) + 10000 * part + 100 * i + j


def rows(i: int, langs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(langs), MAX_LEN), np.int32)
    parts = np.zeros((len(langs), MAX_LEN), np.int8)
    for r, code in enumerate(langs):
        lang = LANGS.index(code)
        seq, codes = [SPECIAL["cls"]], [-1]
        for part, n in zip((1, 2, 3), LENGTHS[i]):
            seq += [token(lang, part, i, j) for j in range(n)]
            codes += [part] * n
        ids[r, :len(seq)], parts[r, :len(seq)] = seq, codes
    return ids, parts


def expected_tokens(i: int, lang: str, keep: tuple[int, ...], max_len: int = MAX_LEN) -> list[int]:
    """The assembled row written out by hand: CLS, kept parts, SEP, zeros."""
    seq = [SPECIAL["cls"]]
    for part, n in zip((1, 2, 3), LENGTHS[i]):
        if part in keep:
            seq += [token(LANGS.index(lang), part, i, j) for j in range(n)]
    seq = seq[:max_len]
    if len(seq) == max_len:
        seq[-1] = SPECIAL["sep"]
    else:
        seq.append(SPECIAL["sep"])
    return seq + [0] * (max_len - len(seq))


def pattern(h: int, w: int, channel: int | None = None, seed: int = 0) -> np.ndarray:
    """A non-constant RGB image; with ``channel``, that channel dominates."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (h + w))], -1)
    img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
    if channel is not None:
        img = (img // 4).astype(np.uint8)
        img[..., channel] = 200 + img[..., channel] // 4
    return img


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_image(root: Path, image_id: str, kind: str, k: int = 0) -> None:
    path = image_path(root, PART, image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("rgb", "rgb3"):
        Image.fromarray(pattern(36, 48, channel=k if kind == "rgb3" else None, seed=k)).save(path, quality=95)
    elif kind == "gray":
        Image.fromarray(pattern(40, 30)[..., 0]).save(path)  # mode L, PNG
    elif kind == "cmyk":
        cmyk = np.zeros((30, 40, 4), np.uint8)
        cmyk[:, :20, 0] = 255  # cyan left, grey right
        cmyk[:, 20:, 3] = 128
        Image.frombytes("CMYK", (40, 30), cmyk.tobytes()).save(path, quality=95)
    elif kind == "rgba":
        rgba = np.concatenate([pattern(30, 30), np.full((30, 30, 1), 60, np.uint8)], -1)
        Image.fromarray(rgba).save(path)  # PNG, mode RGBA
    elif kind == "exif":
        img = Image.new("RGB", (40, 20), (255, 0, 0))
        img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: red left, blue right
        exif = Image.Exif()
        exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
        img.save(path, exif=exif.tobytes(), quality=95)
    elif kind == "truncated":
        data = jpeg_bytes(pattern(64, 64))
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image at all")
    elif kind != "missing":
        raise AssertionError(kind)


def build(root: Path, langs: list[str]) -> tuple[Path, Path]:
    """Write the LMDB, keys, manifest and images of the 10 recipes; return (data_path, img_path)."""
    data, imgs = root / "data", root / "images"
    data.mkdir(parents=True)
    ext = {"gray": "png", "rgba": "png"}
    env = lmdb.open(str(lmdb_dir(data, PART)), map_size=1 << 24, subdir=True)
    with env.begin(write=True) as txn:
        for i, kind in enumerate(KINDS):
            n_img = 3 if kind == "rgb3" else (0 if kind == "none" else 1)
            images = [f"{i:02d}{k}c{i:05x}.{ext.get(kind, 'jpg')}" for k in range(n_img)]
            for k, image_id in enumerate(images):
                write_image(imgs, image_id, kind, k)
            ids, parts = rows(i, langs)
            record = Record(langs=list(langs), ids=ids, parts=parts, cls=7 * i + 1, images=images)
            txn.put(rid(i).encode(), encode_record(record))
    env.close()
    write_keys(keys_file(data, PART), [rid(i) for i in range(len(KINDS))])
    manifest = {"format_version": 1, "counts": {PART: len(KINDS)}, "languages": list(langs),
                "tokenizer": "test", "vocab_size": 700000, "max_len": MAX_LEN, "max_imgs": 5,
                "special_ids": SPECIAL, "dropped": {}}
    (data / MANIFEST).write_text(json.dumps(manifest))
    return data, imgs


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return build(tmp_path_factory.mktemp("full"), list(LANGS))


def make(paths, **kwargs) -> RecipeImageDataset:
    kwargs.setdefault("image_size", S)
    return RecipeImageDataset(*paths, PART, **kwargs)


def lang_of(tokens: torch.Tensor) -> str:
    return LANGS[int(tokens[1]) // 100000 - 1]


# ------------------------------------------------------------------ images and transforms

def test_load_image_modes_become_rgb(full):
    _, imgs = full
    ids = {kind: f"{i:02d}0c{i:05x}" for i, kind in enumerate(KINDS)}
    gray = load_image(image_path(imgs, PART, ids["gray"] + ".png"))
    assert gray.mode == "RGB" and gray.size == (30, 40)
    g = np.asarray(gray)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 0] == pattern(40, 30)[..., 0]).all()
    cmyk = np.asarray(load_image(image_path(imgs, PART, ids["cmyk"] + ".jpg"))).astype(int)
    assert np.abs(cmyk[10, 5] - [0, 255, 255]).max() <= 3  # pure cyan
    assert np.abs(cmyk[10, 30] - [127, 127, 127]).max() <= 3  # K = 128
    rgba = load_image(image_path(imgs, PART, ids["rgba"] + ".png"))
    assert rgba.mode == "RGB" and (np.asarray(rgba) == pattern(30, 30)).all()  # alpha dropped


def test_load_image_palette_and_16bit(tmp_path):
    pal = Image.fromarray(pattern(10, 12)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").mode == "RGB"
    Image.fromarray(np.array([[0, 32768], [65535, 1000]], np.uint16)).save(tmp_path / "g16.png")
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out[..., 0].tolist() == [[0, 128], [255, 4]]  # scaled to 8 bits, not clipped white


def test_exif_orientation_applied(full):
    _, imgs = full
    img = np.asarray(load_image(image_path(imgs, PART, "040c00004.jpg"))).astype(int)
    assert img.shape == (40, 20, 3)  # stored 40 wide x 20 high, displayed rotated
    assert np.abs(img[5, 10] - [255, 0, 0]).max() < 12  # stored left (red) is now on top
    assert np.abs(img[34, 10] - [0, 0, 255]).max() < 12


def test_load_image_errors(full, tmp_path):
    _, imgs = full
    for name, words in (("060c00006.jpg", "missing"), ("070c00007.jpg", "truncated"),
                        ("080c00008.jpg", "cannot identify")):
        path = image_path(imgs, PART, name)
        with pytest.raises(ImageLoadError, match=words) as err:
            load_image(path)
        assert str(path) in str(err.value)


def normalize_ref(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_transforms_against_slicing():
    arr = pattern(256, 256, seed=3)
    img = Image.fromarray(arr)
    assert resize_size(224) == 256 and resize_size(32) == 37
    # Eval on a 256 square: resize is the identity, centre crop starts at 16.
    assert torch.allclose(eval_transform(img, 224), normalize_ref(arr[16:240, 16:240]), atol=1e-6)
    # Train with no rotation and no padding: a plain crop (and flip) of the image.
    params = TrainParams(pad_to_square=False, pad_mode="edge", angle=0.0, top=5, left=30, flip=True)
    out = train_transform(img, params, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, normalize_ref(arr[5:229, 30:254][:, ::-1].copy()), atol=1e-6)
    # Rotation fills the corners with black (normalised zeros).
    rot = train_transform(img, TrainParams(False, "edge", 10.0, 0, 0, False), 224)
    black = normalize_ref(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    assert torch.allclose(rot[:, 0, 0], black, atol=1e-6)


def test_pad_to_square_split_and_modes():
    arr = pattern(10, 4)
    out = np.asarray(pad_to_square(Image.fromarray(arr), "constant"))
    assert out.shape == (10, 10, 3)
    assert (out[:, :3] == 0).all() and (out[:, 7:] == 0).all() and (out[:, 3:7] == arr).all()
    edge = np.asarray(pad_to_square(Image.fromarray(arr), "edge"))
    assert (edge[:, 0] == arr[:, 0]).all() and (edge[:, 9] == arr[:, 3]).all()
    thin = pad_to_square(Image.fromarray(pattern(2, 50)), "reflect")  # padding > image height
    assert thin.size == (50, 50)


# ------------------------------------------------------------------ text

def test_eval_tokens_exact_for_textinputs(full):
    for textinputs, keep in (("title,ingr,inst", (1, 2, 3)), ("title", (1,)), ("ingr,inst", (2, 3)),
                             ("inst,title", (1, 3))):
        ds = make(full, train=False, textinputs=textinputs)
        for i in (0, 1, 3):
            sample = ds[i]
            assert isinstance(sample, Sample)
            assert sample.tokens.dtype == torch.int64 and sample.tokens.shape == (MAX_LEN,)
            assert sample.tokens.tolist() == expected_tokens(i, "en", keep), (textinputs, i)


def test_sep_overwrites_last_token_of_full_row(full):
    tokens = make(full, train=False)[5].tokens.tolist()
    assert 0 not in tokens and tokens[-1] == SPECIAL["sep"]
    assert tokens == expected_tokens(5, "en", (1, 2, 3))
    assert tokens[-2] == token(0, 3, 5, 3)  # only the last instruction token was overwritten
    short = make(full, train=False, max_len=8)[0].tokens.tolist()  # truncation keeps the rule
    assert short == expected_tokens(0, "en", (1, 2, 3), max_len=8)


def test_eval_language_row_and_absent_language(full, tmp_path):
    for lang in ("de", 3):
        tokens = make(full, train=False, language=lang)[2].tokens
        assert tokens.tolist() == expected_tokens(2, "de", (1, 2, 3))
    partial = build(tmp_path, ["en", "de"])
    with pytest.raises(ValueError, match=r"'fr'.*languages present: en, de"):
        make(partial, train=False, language="fr")


def test_sample_fields_and_class(full):
    ds = make(full, train=True)
    assert len(ds) == 10 and ds.ids == [rid(i) for i in range(10)]
    assert ds.languages == list(LANGS) and ds.special_ids == SPECIAL
    for i in (0, 4, 5):
        sample = ds[i]
        assert sample.image.shape == (3, S, S) and sample.image.dtype == torch.float32
        assert sample.recipe_id == rid(i) and sample.cls == 7 * i  # stored 7i + 1, minus 1
        assert sample.tokens[0] == SPECIAL["cls"] and SPECIAL["sep"] in sample.tokens.tolist()


def test_tokens_method_matches_getitem(full):
    for text_aug in ("english,de,ru,fr", "english,de,ru,fr,mask"):
        ds = make(full, train=True, text_aug=text_aug, image_size=8)
        for epoch in range(20):
            ds.set_epoch(epoch)
            for i in (0, 5):
                assert torch.equal(ds[i].tokens, ds.tokens(i))


def assert_binomial(counts: dict, probs: dict, draws: int, sigmas: float = 4.0) -> None:
    """Each count within ``sigmas`` binomial standard deviations of ``draws * p``; p = 0 gives 0."""
    for key, count in counts.items():
        p = probs.get(key, 0.0)
        bound = sigmas * (draws * p * (1 - p)) ** 0.5
        assert abs(count - draws * p) <= bound, (key, count, draws * p, counts)


# The reference's tree: every draw starts from English; "english" adds its back-translations,
# listed foreign languages take half of the mass.
TREES = {
    "english,de,ru,fr": {"en": 1 / 4, "de-en": 1 / 8, "ru-en": 1 / 8, "de": 1 / 6, "ru": 1 / 6, "fr": 1 / 6},
    "de,ru,fr": {"en": 1 / 2, "de": 1 / 6, "ru": 1 / 6, "fr": 1 / 6},
    "fr": {"en": 1 / 2, "fr": 1 / 2},
    "english": {"en": 1 / 2, "de-en": 1 / 4, "ru-en": 1 / 4},
    "english,ru,mask": {"en": 1 / 4, "de-en": 1 / 8, "ru-en": 1 / 8, "ru": 1 / 2},
    "de,fr": {"en": 1 / 2, "de": 1 / 4, "fr": 1 / 4},
    "none": {"en": 1.0},
    "": {"en": 1.0},
    "mask": {"en": 1.0},
}


@pytest.mark.parametrize("text_aug", list(TREES))
def test_language_probabilities_exact(text_aug):
    got = language_distribution(text_aug, list(LANGS))
    assert list(got) == [code for code in LANGS if code in TREES[text_aug]]  # row order, no zeros
    assert got == pytest.approx(TREES[text_aug], rel=1e-12, abs=0)


@pytest.mark.parametrize(("text_aug", "draws"), [("english,de,ru,fr", 4000), ("de,ru,fr", 2000), ("fr", 1000)])
def test_language_choice_frequencies(full, text_aug, draws):
    ds = make(full, train=True, text_aug=text_aug)
    probs = TREES[text_aug]
    assert ds.language_probs == pytest.approx(probs, rel=1e-12, abs=0)
    counts = dict.fromkeys(LANGS, 0)
    for n in range(draws):
        ds.set_epoch(n // 4)
        i = n % 4  # recipes 0..3
        tokens = ds.tokens(i)  # what ds[i] returns (test above), without decoding the image
        code = lang_of(tokens)
        counts[code] += 1
        assert tokens.tolist() == expected_tokens(i, code, (1, 2, 3))  # the whole row is that language
    assert_binomial(counts, probs, draws)  # back-translations never drawn unless "english" is listed


def test_branch_yields_when_languages_missing(tmp_path, caplog):
    tree = "english,de,ru,fr"
    assert language_distribution(tree, ["en", "de"]) == pytest.approx({"en": 0.5, "de": 0.5})
    assert language_distribution(tree, ["en", "de-en"]) == pytest.approx({"en": 2 / 3, "de-en": 1 / 3})
    assert language_distribution(tree, ["en", "ru-en", "fr"]) == pytest.approx(
        {"en": 1 / 3, "ru-en": 1 / 6, "fr": 0.5})
    # Without "english" the English branch is the original row alone, back-translations or not.
    assert language_distribution("de,ru,fr", ["en", "de-en", "ru-en", "ru"]) == pytest.approx(
        {"en": 0.5, "ru": 0.5})
    assert language_distribution("de,ru,fr", ["en", "de-en", "ru-en"]) == {"en": 1.0}
    assert language_distribution("de,ru,fr", ["de-en", "fr"]) == {"fr": 1.0}  # no en: foreign yields
    with caplog.at_level(logging.WARNING, logger="data.dataset"):
        assert language_distribution("ru", ["en", "de"]) == {"en": 1.0}  # nothing foreign left: English
    assert "ru not in the LMDB" in caplog.text
    for none in ("none", "", None, "mask"):
        assert language_distribution(none, list(LANGS)) == {"en": 1.0}
    for tree, present in (("none", ["de"]), ("english", ["de", "fr"]), ("fr", ["de-en", "ru"])):
        with pytest.raises(ValueError, match="none of the languages"):
            language_distribution(tree, present)
    with pytest.raises(ValueError, match="unknown text_aug"):
        language_distribution("english,klingon", list(LANGS))
    # Through the dataset: an LMDB with en, de-en and fr only.
    ds = make(build(tmp_path, ["en", "de-en", "fr"]), train=True)
    counts = dict.fromkeys(LANGS, 0)
    for epoch in range(1200):
        ds.set_epoch(epoch)
        counts[lang_of(ds.tokens(0))] += 1
    assert_binomial(counts, {"en": 1 / 3, "de-en": 1 / 6, "fr": 0.5}, 1200)


class RecordingRng:
    """Delegates to a numpy Generator and records the results of ``integers``."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple[tuple, dict, np.ndarray | int]] = []

    def integers(self, *args, **kwargs):
        out = self.rng.integers(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def mask_row(n: int) -> tuple[np.ndarray, np.ndarray]:
    """CLS + ``n - 1`` part tokens (ids 10, 11, ...) then 3 padding zeros."""
    ids = np.array([2] + list(range(10, 9 + n)) + [0, 0, 0], np.int32)
    parts = np.array([-1] + [1 + (j % 3) for j in range(n - 1)] + [0, 0, 0], np.int8)
    return ids, parts


def test_mask_seeded_draw_exact():
    ids, parts = mask_row(21)  # n = 21: k ~ U{0..4}
    got = assemble_tokens(ids, parts, (1, 2, 3), SPECIAL["sep"], 24, mask_id=SPECIAL["mask"],
                          rng=np.random.default_rng(7))
    assert got.tolist() == [2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 4, 4, 4, 24, 25, 26, 4, 28, 29, 3, 0, 0]
    rng = np.random.default_rng(7)  # the same draws written out: k, then k positions in 0..n-1
    k = rng.integers(5)
    assert k == 4 and rng.integers(21, size=k).tolist() == [13, 14, 18, 12]


def test_mask_count_and_positions_distribution():
    n, draws = 21, 10000
    ids, parts = mask_row(n)
    ks, positions = Counter(), Counter()
    for seed in range(draws):
        rng = RecordingRng(seed)
        got = assemble_tokens(ids, parts, (1, 2, 3), SPECIAL["sep"], 24, mask_id=SPECIAL["mask"], rng=rng)
        (k_args, _, k), (pos_args, pos_kwargs, pos) = rng.calls  # two draws: k, then the positions
        assert k_args == (5,) and pos_args == (n,) and pos_kwargs == {"size": k} and len(pos) == k
        ks[int(k)] += 1
        positions.update(pos.tolist())
        expected = np.append(ids[:n], [SPECIAL["sep"], 0, 0]).astype(np.int64)
        expected[pos] = SPECIAL["mask"]
        assert got.tolist() == expected.tolist()
    assert set(ks) == set(range(5))  # k in 0 .. floor(21 / 4) - 1, zero included
    assert_binomial(ks, dict.fromkeys(range(5), 1 / 5), draws)
    total = sum(positions.values())
    assert set(positions) == set(range(n))  # CLS (0) included, never beyond the row
    assert_binomial(positions, dict.fromkeys(range(n), 1 / n), total)
    # A row of fewer than 4 tokens draws nothing and stays unmasked (the reference fails on it).
    for short in (1, 2, 3):
        ids, parts = mask_row(short)
        rng = RecordingRng(0)
        got = assemble_tokens(ids, parts, (1, 2, 3), SPECIAL["sep"], 8, mask_id=SPECIAL["mask"], rng=rng)
        assert rng.calls == [] and SPECIAL["mask"] not in got.tolist()
    # n counts CLS and the kept parts only: with titles alone, row 0..4 -> n = 5, k ~ U{0}.
    ids, parts = mask_row(13)
    rng = RecordingRng(0)
    assemble_tokens(ids, parts, (1,), SPECIAL["sep"], 24, mask_id=SPECIAL["mask"], rng=rng)
    assert rng.calls[0][0] == (1,) and rng.calls[1][0] == (5,)


def test_text_mask_through_the_dataset(full):
    # Recipe 5 has 15 part tokens: n = 16 (CLS included), so k ~ U{0..3}; max_len 17 keeps every
    # position visible (SEP goes after them).
    ds = make(full, train=True, text_aug="mask", max_len=17)
    exact = {
        0: [4, 110500, 110501, 110502, 110503, 120500, 120501, 120502, 4, 120504, 120505, 130500, 130501, 4,
            130503, 130504, 3],
        1: [2, 110500, 110501, 110502, 110503, 120500, 120501, 120502, 120503, 120504, 120505, 4, 130501,
            130502, 130503, 130504, 3],
    }
    for epoch, tokens in exact.items():
        ds.set_epoch(epoch)
        assert ds.tokens(5).tolist() == tokens
    draws = 3000
    distinct, positions = Counter(), Counter()
    row = expected_tokens(5, "en", (1, 2, 3), max_len=17)
    for epoch in range(draws):
        ds.set_epoch(epoch)
        tokens = ds.tokens(5).tolist()
        masked = [j for j, t in enumerate(tokens) if t == SPECIAL["mask"]]
        assert all(t == r for j, (t, r) in enumerate(zip(tokens, row)) if j not in masked)
        distinct[len(masked)] += 1
        positions.update(masked)
    # k uniform on 0..3, positions uniform on 0..15 with replacement: distinct masked positions
    # D = 0: 1/4; 1: (1 + 1/16 + 1/256) / 4; 2: (15/16 + 45/256) / 4; 3: (210/256) / 4.
    assert_binomial(distinct, {0: 256 / 1024, 1: 273 / 1024, 2: 285 / 1024, 3: 210 / 1024}, draws)
    # Each position (CLS included) is masked with probability mean_k(1 - (15/16)^k) = 1473/16384.
    assert set(positions) == set(range(16))
    assert_binomial(positions, dict.fromkeys(range(16), 1473 / 16384), draws)
    assert SPECIAL["mask"] not in make(full, train=False, text_aug="english,mask")[5].tokens.tolist()


def test_assemble_tokens_and_textinputs_errors():
    ids = np.array([2, 11, 12, 21, 31, 0, 0], np.int32)
    parts = np.array([-1, 1, 1, 2, 3, 0, 0], np.int8)
    assert assemble_tokens(ids, parts, (2, 3), 3, 6).tolist() == [2, 21, 31, 3, 0, 0]
    assert assemble_tokens(ids, parts, (1, 2, 3), 3, 5).tolist() == [2, 11, 12, 21, 3]
    assert parse_textinputs("inst, title") == (1, 3)
    for bad in ("", "title,steps"):
        with pytest.raises(ValueError, match="textinputs"):
            parse_textinputs(bad)


# ------------------------------------------------------------------ randomness

def test_augmentation_per_epoch_and_reproducible(full):
    ds = make(full, train=True)
    ds.set_epoch(3)
    a, b = ds[0], ds[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.tokens, b.tokens)
    again = make(full, train=True)
    again.set_epoch(3)
    assert torch.equal(again[0].image, a.image)
    images = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        images.append(ds[0].image)
    assert all(not torch.equal(images[0], other) for other in images[1:])
    assert not torch.equal(make(full, train=True, seed=99)[0].image, make(full, train=True)[0].image)
    ev = make(full, train=False)
    ev.set_epoch(5)
    assert torch.equal(ev[0].image, make(full, train=False)[0].image)  # eval: no randomness


def dominant(image: torch.Tensor) -> int:
    centre = image[:, S // 2 - 6:S // 2 + 6, S // 2 - 6:S // 2 + 6]
    return int(centre.mean(dim=(1, 2)).argmax())


def test_image_choice_among_first_max_imgs(full):
    assert dominant(make(full, train=False)[0].image) == 0  # eval: the first image
    for max_imgs, allowed in ((2, {0, 1}), (5, {0, 1, 2})):
        ds = make(full, train=True, max_imgs=max_imgs)
        seen = set()
        for epoch in range(40):
            ds.set_epoch(epoch)
            seen.add(dominant(ds[0].image))
        assert seen == allowed


def batches(loader, ds, epochs):
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_dataloader_workers_identical(full):
    ds0 = make(full, train=True)
    ds2 = make(full, train=True)
    loader0 = torch.utils.data.DataLoader(ds0, batch_size=4, collate_fn=collate_skip_bad, num_workers=0)
    loader2 = torch.utils.data.DataLoader(ds2, batch_size=4, collate_fn=collate_skip_bad, num_workers=2,
                                          persistent_workers=True)
    ref, got = batches(loader0, ds0, [0, 1]), batches(loader2, ds2, [0, 1])
    for epoch_ref, epoch_got in zip(ref, got):
        assert len(epoch_ref) == len(epoch_got) == 3
        for a, b in zip(epoch_ref, epoch_got):
            assert isinstance(b, Batch)
            assert a.recipe_ids == b.recipe_ids and [x.recipe_id for x in a.bad] == [x.recipe_id for x in b.bad]
            assert torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens)
            assert torch.equal(a.classes, b.classes)
    # set_epoch reached the persistent workers: epoch 1 differs from epoch 0.
    assert not torch.equal(got[0][0].images, got[1][0].images)


def test_record_reader_is_the_one_lmdb_reader(full, tmp_path):
    data, _ = full
    reader = RecordReader(lmdb_dir(data, PART))
    assert not reader.opened  # opened on the first read
    record = reader.get(rid(0))
    assert record.cls == 1 and record.langs == list(LANGS) and reader.opened
    assert reader.get("no-such-recipe") is None
    assert not pickle.loads(pickle.dumps(reader)).opened
    with RecordReader(lmdb_dir(data, PART), shared=False) as private:
        assert private.get(rid(1)).cls == 8
    assert not private.opened  # closed with the block
    bad = tmp_path / "bad_lmdb"
    env = lmdb.open(str(bad), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"x", b"not a record")
    env.close()
    with RecordReader(bad, shared=False) as private, pytest.raises(RecordError, match="bad magic"):
        private.get("x")


def test_dataset_pickles_without_env(full):
    ds = make(full, train=False)
    first = ds[0]
    assert ds._records.opened  # opened lazily on first access
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._records.opened
    assert torch.equal(clone[0].image, first.image)
    fresh = make(full, train=False)
    assert not fresh._records.opened  # nothing opened in __init__


# ------------------------------------------------------------------ bad images

def test_bad_images_skipped_never_blank(full):
    for train in (False, True):
        ds = make(full, train=train)
        items = [ds[i] for i in range(len(ds))]
        bad = {item.recipe_id: item.reason for item in items if isinstance(item, BadSample)}
        assert set(bad) == {rid(i) for i in BAD}
        assert "missing" in bad[rid(6)] and "truncated" in bad[rid(7)] and "no image" in bad[rid(9)]
        for item in items:
            if isinstance(item, Sample):
                assert item.image.std() > 0.1  # a real picture, not a blank or constant fill
        batch = collate_skip_bad(items)
        assert batch.recipe_ids == [rid(i) for i in range(10) if i not in BAD]
        assert batch.images.shape == (6, 3, S, S) and batch.classes.tolist() == [0, 7, 14, 21, 28, 35]
        assert [b.recipe_id for b in batch.bad] == [rid(i) for i in sorted(BAD)]


def test_collate_trims_and_all_bad_batch(full):
    ds = make(full, train=False, textinputs="title")
    batch = collate_skip_bad([ds[0], ds[3], ds[6]])  # titles of 2 and 3 tokens: CLS + 3 + SEP = 5
    assert batch.tokens.shape == (2, 5) and batch.tokens.dtype == torch.int64
    assert batch.tokens[0].tolist() == expected_tokens(0, "en", (1,))[:5]
    assert batch.tokens[1].tolist() == expected_tokens(3, "en", (1,))[:5]
    empty = collate_skip_bad([ds[6], ds[9]])
    assert empty.images.shape == (0, 3, S, S) and empty.tokens.shape[0] == 0
    assert empty.classes.shape == (0,) and empty.recipe_ids == [] and len(empty.bad) == 2


def test_bad_image_tracker(caplog):
    tracker = BadImageTracker("val", total=200, max_fraction=0.01)  # up to 2 allowed
    one, two, three = (BadSample(f"r{i}", f"missing image file x{i}.jpg") for i in range(3))
    with caplog.at_level(logging.WARNING, logger="data.dataset"):
        assert tracker.update([one]) == 1
        assert tracker.update([one, two]) == 1  # r0 counted and logged once
    assert tracker.summary() == "2 of 200 recipes of val had no readable image (skipped)"
    assert sum("r0" in rec.getMessage() for rec in caplog.records) == 1
    with pytest.raises(BadImageLimitError, match=r"^3 of 200 recipes of val have no readable image, above "
                                                 r"--max_bad_images 0.01; first: recipe r0: missing image "
                                                 r"file x0.jpg; check --img_path") as err:
        tracker.update([three])
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)
    rooted = BadImageTracker("val", total=1, max_fraction=0.0, img_root="/imgs")
    with pytest.raises(BadImageLimitError, match=r"1 of 1 recipes of val have no readable image under /imgs"):
        rooted.update([BadSample("r9", "unreadable image file\nx.jpg (OSError: truncated)")])
    with pytest.raises(InputError, match="--max_bad_images must be a fraction"):
        BadImageTracker("val", total=1, max_fraction=1.5)


def test_tracker_through_loader_stops_run(full):
    ds = make(full, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_skip_bad)
    tracker = BadImageTracker(PART, len(ds), max_fraction=0.5)
    for batch in loader:
        tracker.update(batch.bad)
    assert tracker.count == 4
    strict = BadImageTracker(PART, len(ds), max_fraction=0.25)
    with pytest.raises(BadImageLimitError, match=f"of {PART} have no readable image"):
        for batch in loader:
            strict.update(batch.bad)


def test_bad_inputs_refused_when_built(full, tmp_path):
    """Each bad input is one line naming the path and the fix, raised before any sample is read."""
    data, imgs = full
    assert check_partition(data, PART) == [rid(i) for i in range(len(KINDS))]
    assert check_image_root(imgs, [PART]) == imgs
    with pytest.raises(ImageRootError, match=rf"^--img_path {tmp_path / 'nowhere'}: no such folder"):
        make((data, tmp_path / "nowhere"), train=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ImageRootError, match="afile: not a folder"):
        check_image_root(tmp_path / "afile")
    with pytest.raises(ImageRootError, match=f"it has no {PART}/ folder"):
        make((data, tmp_path), train=False)
    with pytest.raises(DatasetError, match="unknown partition 'dev'"):
        RecipeImageDataset(data, imgs, "dev", train=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / MANIFEST).write_text((data / MANIFEST).read_text())
    with pytest.raises(DatasetError, match=rf"{keys_file(empty, PART)} not found: .*create_lmdb.py"):
        make((empty, imgs), train=False)
    write_keys(keys_file(empty, PART), [])
    lmdb_dir(empty, PART).mkdir()
    with pytest.raises(EmptyPartitionError, match=rf"^partition {PART} of {empty} holds 0 recipes .*create_lmdb.py"):
        make((empty, imgs), train=False)
    (empty / MANIFEST).write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        make((empty, imgs), train=False)
    (empty / MANIFEST).unlink()
    with pytest.raises(DatasetError, match="manifest.json not found: build the LMDBs with create_lmdb.py"):
        make((empty, imgs), train=False)
    for err in (ImageRootError, EmptyPartitionError, BadImageLimitError):
        assert issubclass(err, InputError)


@pytest.mark.parametrize("train", [True, False])
def test_fast_uint8_dataset_matches_the_pil_path(full, train):
    """image_backend="fast", uint8=True: the same samples, tokens and bad images; pixels within 1 level."""
    from utils.imagenet import normalize_on_device

    pil, fast, pil8 = (make(full, train=train, image_backend=b, uint8=u)
                       for b, u in (("pil", False), ("fast", True), ("pil", True)))
    for i in range(len(pil)):
        a, b, c = pil[i], fast[i], pil8[i]
        assert type(a) is type(b) is type(c)
        if isinstance(a, BadSample):
            assert a == b == c  # missing, truncated, not an image, no image entry: the same reason
            continue
        assert b.image.dtype == torch.uint8 and b.image.shape == (3, S, S)
        assert torch.equal(normalize_on_device(c.image[None])[0], a.image)  # pil + uint8: today's values
        assert (b.image.int() - c.image.int()).abs().max() <= 1
        assert torch.equal(a.tokens, b.tokens) and (a.recipe_id, a.cls) == (b.recipe_id, b.cls)
    samples = [fast[i] for i in range(len(fast))]
    batch = collate_skip_bad(samples)
    assert batch.images.dtype == torch.uint8 and len(batch.bad) == 4
    assert batch.images.is_contiguous(memory_format=torch.channels_last)  # the pixels as decoded, interleaved
    assert torch.equal(batch.images, torch.stack([s.image for s in samples if isinstance(s, Sample)]))
    with pytest.raises(ValueError, match="unknown image backend"):
        make(full, train=train, image_backend="opencv")
