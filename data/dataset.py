"""``RecipeImageDataset``: one LMDB partition as (image, token ids, recipe id, class) samples.

Built by ``create_lmdb.py`` (docs/data.md). Per docs/model.md:

* **Text.** A language row is chosen (training: by the ``text_aug`` choice tree over the
  languages present in the LMDB; evaluation: the ``language`` row), CLS and the parts named by
  ``textinputs`` are kept in title, ingr, inst order, padded with 0 to ``max_len``, and SEP is
  written right after the last kept token (over the last token when the row is full).
* **Choice tree**, the reference's: every draw starts from English. The English branch is
  ``en`` alone, or, when ``english`` is listed, ``en`` 1/2, ``de-en`` 1/4, ``ru-en`` 1/4; the
  foreign branch holds the foreign codes listed (``de``, ``ru``, ``fr``), uniformly. With a
  foreign code listed, each branch has 1/2, so ``english,de,ru,fr`` gives ``en`` 1/4, ``de-en``
  1/8, ``ru-en`` 1/8, ``de``, ``ru``, ``fr`` 1/6 each, ``de,ru,fr`` gives ``en`` 1/2 and 1/6
  each, ``fr`` gives ``en`` 1/2, ``fr`` 1/2 (:attr:`RecipeImageDataset.language_probs`).
  Languages absent from the LMDB are dropped and their branch's weight is renormalised over what
  is left; a branch left empty yields to the other. ``"none"`` or ``""`` means English only.
* **Masking** (item ``mask`` in ``text_aug``, training only), the reference's: with ``n`` the
  length of the kept row (CLS and the selected parts, before SEP), ``k`` is drawn uniformly from
  ``0 .. floor(n / 4) - 1`` and ``k`` positions uniformly from ``0 .. n - 1`` with replacement
  (CLS included); they become the tokenizer's mask id. A row with ``n < 4`` is left unmasked
  (the reference's draw fails on it).
* **Images.** Training: one of the first ``max_imgs`` images uniformly; evaluation: the first.
  A missing or undecodable image, or a recipe without image entries, gives a :class:`BadSample`
  (never a blank image); :func:`collate_skip_bad` drops it and :class:`BadImageTracker` counts it.
  ``image_backend="fast"`` decodes and transforms them within 1 level of the PIL path, about twice
  as fast per core, and ``uint8=True`` returns uint8 images that the step normalises on its device
  (:mod:`data.transforms`); the scripts use both (``--image_backend``).

Bad input is refused when the dataset is built, before any work: a data folder without
``manifest.json`` or keys, a partition of 0 recipes (:func:`check_partition`), an image root that
is not a folder or lacks the partition's folder (:func:`check_image_root`). Each raises a
:class:`DatasetError` (a :class:`utils.errors.InputError`) whose one-line message names the path
and the fix.

Randomness: every draw of sample ``index`` (image, transform parameters, language, mask) comes
from ``np.random.default_rng([seed, epoch, index])`` in that order, so samples are identical for
any number of DataLoader workers, differ per epoch, and are reproducible from ``seed``. The epoch
lives in shared memory, so :meth:`RecipeImageDataset.set_epoch` also reaches persistent workers.

The LMDB is read with :class:`data.lmdb_format.RecordReader`: opened lazily on the first
``__getitem__`` (never in ``__init__``, and never pickled to workers), read-only, ``lock=False``,
``readahead=False``, once per process and LMDB.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from data.langs import LANGS, parse_language
from data.lmdb_format import (
    MANIFEST,
    PART_CLS,
    PART_CODES,
    TOKENIZER_DIR,
    RecordError,
    RecordReader,
    keys_file,
    lmdb_dir,
)
from data.recipe1m import PARTITIONS, image_path, load_keys
from data.tokenizer import VOCAB_TXT
from data.transforms import (
    ImageLoadError,
    TrainParams,
    check_backend,
    draw_train_params,
    load_transformed,
)
from utils.errors import InputError
from utils.lineage import KEY as LINEAGE
from utils.lineage import LMDB_FIELDS, file_sha256, fingerprint, lmdb_lineage

logger = logging.getLogger(__name__)

TEXT_AUG_ITEMS = ("english", "de", "ru", "fr", "mask")
ENGLISH_BRANCH = (("en", 0.5), ("de-en", 0.25), ("ru-en", 0.25))
FOREIGN_LANGS = ("de", "ru", "fr")
MASK_FRACTION = 4  # k < floor(n / MASK_FRACTION): at most a quarter of the row is masked
TEXTINPUTS = ("title", "ingr", "inst")


class DatasetError(InputError):
    """A data folder, partition or image root that cannot be used; the message names it and the fix."""


class EmptyPartitionError(DatasetError):
    """A partition of the LMDB that holds no recipe."""


class ImageRootError(DatasetError):
    """An image root (``--img_path``) that is not a folder or lacks a partition's folder."""


class BadImageLimitError(DatasetError):
    """More recipes of a partition without a readable image than ``--max_bad_images`` allows."""


class Sample(NamedTuple):
    """One good sample."""

    image: torch.Tensor  # (3, S, S) float32, ImageNet-normalised; uint8 0..255 with the dataset's uint8=True
    tokens: torch.Tensor  # (max_len,) int64, 0-padded, CLS ... SEP
    recipe_id: str
    cls: int  # classes1M class (0 = background)


class BadSample(NamedTuple):
    """A recipe whose image could not be used; ``reason`` names the file and the cause.

    ``image_size`` lets :func:`collate_skip_bad` shape an all-bad batch ``(0, 3, S, S)``.
    """

    recipe_id: str
    reason: str
    image_size: int = 224


class Batch(NamedTuple):
    """What :func:`collate_skip_bad` returns; ``bad`` lists the samples left out."""

    images: torch.Tensor  # (B, 3, S, S)
    tokens: torch.Tensor  # (B, T), T = longest row of the batch
    recipe_ids: list[str]
    classes: torch.Tensor  # (B,) int64
    bad: list[BadSample]


def parse_text_aug(text_aug: str | None) -> tuple[frozenset[str], bool]:
    """Split ``text_aug`` into its language items and the mask flag.

    Returns:
        ``(items, mask)``: ``items`` a subset of english, de, ru, fr (empty for ``none`` / ``""``).

    Raises:
        ValueError: an unknown item.
    """
    items = {item.strip().lower() for item in str(text_aug or "").split(",")} - {"", "none"}
    unknown = sorted(items - set(TEXT_AUG_ITEMS))
    if unknown:
        raise ValueError(f"unknown text_aug item(s) {', '.join(unknown)}; use a comma-separated subset "
                         f"of {', '.join(TEXT_AUG_ITEMS)}, or 'none'")
    return frozenset(items - {"mask"}), "mask" in items


def language_distribution(text_aug: str | None, present: Sequence[str]) -> dict[str, float]:
    """Probability of each language row under the ``text_aug`` choice tree (module docstring).

    Args:
        text_aug: e.g. ``"english,de,ru,fr"``, ``"de,ru,fr"``, ``"english,mask"``, ``"none"``.
        present: the language codes stored in the LMDB.

    Returns:
        ``{code: probability}`` over languages with a non-zero probability, in row order.

    Raises:
        ValueError: an unknown ``text_aug`` item, or no language of the tree in the LMDB.
    """
    items, _ = parse_text_aug(text_aug)
    # The reference starts every draw from the original English row; only "english" opens the
    # back-translations to it, and listed foreign languages then replace it half of the time.
    english = ENGLISH_BRANCH if "english" in items else (("en", 1.0),)
    listed = [code for code, _ in english] + [code for code in FOREIGN_LANGS if code in items]
    absent = [code for code in listed if code not in present]
    if absent and items:
        logger.warning("text_aug %r: %s not in the LMDB (languages: %s); drawing among the others",
                       text_aug, ", ".join(absent), ", ".join(present))
    branches = [{code: w for code, w in english if code in present},
                {code: 1.0 for code in FOREIGN_LANGS if code in items and code in present}]
    branches = [b for b in branches if b]  # an empty branch yields to the other
    if not branches:
        raise ValueError(f"none of the languages of text_aug {text_aug!r} ({', '.join(listed)}) is in the "
                         f"LMDB (languages: {', '.join(present)}); choose text_aug languages among them")
    probs: dict[str, float] = {}
    for branch in branches:  # branches share the mass equally; within one, renormalised weights
        total = sum(branch.values())
        for code, weight in branch.items():
            probs[code] = probs.get(code, 0.0) + weight / total / len(branches)
    return {code: probs[code] for code in LANGS if code in probs}


def parse_textinputs(textinputs: str | Sequence[str]) -> tuple[int, ...]:
    """Part codes for ``textinputs`` (any non-empty subset of title, ingr, inst), in that order."""
    names = textinputs.split(",") if isinstance(textinputs, str) else list(textinputs)
    names = {name.strip().lower() for name in names} - {""}
    unknown = sorted(names - set(TEXTINPUTS))
    if unknown or not names:
        raise ValueError(f"textinputs {textinputs!r}: use a non-empty comma-separated subset of "
                         f"{', '.join(TEXTINPUTS)}")
    return tuple(PART_CODES[name] for name in TEXTINPUTS if name in names)


def assemble_tokens(ids: np.ndarray, parts: np.ndarray, part_codes: Sequence[int], sep_id: int,
                    max_len: int, *, mask_id: int | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """CLS + the selected parts of one stored row, 0-padded to ``max_len``, then SEP.

    Args:
        ids: stored token ids ``(W,)``.
        parts: part codes ``(W,)`` (-1 CLS, 1 title, 2 ingredients, 3 instructions, 0 padding).
        part_codes: the part codes to keep.
        sep_id: written right after the last kept token, or over the last token of a full row.
        max_len: output length.
        mask_id: when given (with ``rng``), ``k ~ U{0 .. floor(n / 4) - 1}`` positions of the
            ``n`` kept tokens (CLS included), drawn with replacement, become ``mask_id`` before
            SEP is written; nothing is drawn when ``n < 4``.
        rng: source of the mask draws: ``k`` first, then the ``k`` positions.

    Returns:
        int64 ``(max_len,)``.
    """
    keep = (parts == PART_CLS) | np.isin(parts, np.asarray(part_codes, dtype=parts.dtype))
    kept = ids[keep].astype(np.int64)[:max_len]  # (n,)
    if mask_id is not None and rng is not None:
        # As the reference does: n counts the non-padding ids of the row before SEP (all of
        # `kept`, whose ids are > 0), and the positions may repeat, so fewer than k may change.
        n = int(np.count_nonzero(kept > 0))
        bound = n // MASK_FRACTION
        if bound > 0:  # the reference's draw fails on rows of fewer than 4 tokens
            k = int(rng.integers(bound))
            kept[rng.integers(n, size=k)] = mask_id
    out = np.zeros(max_len, dtype=np.int64)
    out[:kept.shape[0]] = kept
    out[min(kept.shape[0], max_len - 1)] = sep_id
    return out


def read_manifest(data_path: str | Path) -> dict:
    """Load and check ``<data_path>/manifest.json`` (format in DEVELOPERS.md).

    Raises:
        DatasetError: the file is missing, not JSON or lacks an entry (the message says to run
            create_lmdb.py).
    """
    path = Path(data_path) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path} not found: build the LMDBs with create_lmdb.py --data_path {data_path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({_one_line(err)}); rebuild with create_lmdb.py") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: not a JSON object; rebuild with create_lmdb.py")
    for key in ("languages", "special_ids", "max_len"):
        if key not in manifest:
            raise DatasetError(f"{path}: entry {key!r} missing; rebuild with create_lmdb.py")
    bad = [code for code in manifest["languages"] if code not in LANGS]
    if bad or not manifest["languages"]:
        raise DatasetError(f"{path}: entry 'languages' = {manifest['languages']} must list codes of "
                           f"{', '.join(LANGS)}")
    for key in ("cls", "sep"):
        if not isinstance(manifest["special_ids"].get(key), int):
            raise DatasetError(f"{path}: entry 'special_ids' lacks an integer {key!r}")
    manifest[LINEAGE] = _manifest_lineage(path, manifest)
    return manifest


def _manifest_lineage(path: Path, manifest: dict) -> dict | None:
    """The manifest's ``lineage`` (utils/lineage.py), checked against its fields and ``tokenizer/vocab.txt``.

    An LMDB built before lineage was recorded gets the one create_lmdb.py would have written (None
    without a ``vocab.txt``).
    """
    vocab = path.parent / TOKENIZER_DIR / VOCAB_TXT
    recorded = manifest.get(LINEAGE)
    if recorded is None:
        if not vocab.is_file():
            return None
        return lmdb_lineage(vocab, manifest.get("vocab_size"), manifest["special_ids"], manifest["max_len"],
                            tokenizer=manifest.get("tokenizer", "?"), languages=manifest["languages"])
    fields = recorded if isinstance(recorded, dict) else {}
    if fields.get("fingerprint") != fingerprint({key: fields.get(key) for key in LMDB_FIELDS}):
        raise DatasetError(f"{path}: entry 'lineage' does not match its own fingerprint (edited by hand?); "
                           f"rebuild with create_lmdb.py")
    if vocab.is_file() and file_sha256(vocab) != fields["vocab_sha256"]:
        raise DatasetError(f"{path}: its lineage records vocabulary sha256 {fields['vocab_sha256']}, but {vocab} is "
                           f"another vocabulary (sha256 {file_sha256(vocab)}): the tokenizer folder was replaced; "
                           f"rebuild with create_lmdb.py")
    return recorded


def check_partition(data_path: str | Path, partition: str) -> list[str]:
    """The recipe ids of ``partition``, refusing a partition that cannot be used (call before any work).

    Returns:
        The ids of ``<data_path>/<partition>_keys.pkl``, in file order.

    Raises:
        DatasetError: an unknown partition, or no keys file or LMDB folder for it.
        EmptyPartitionError: the partition holds 0 recipes.
    """
    if partition not in PARTITIONS:
        raise DatasetError(f"unknown partition {partition!r}; expected one of {', '.join(PARTITIONS)}")
    keys = keys_file(data_path, partition)
    if not keys.is_file():
        raise DatasetError(f"{keys} not found: build the LMDBs with create_lmdb.py --data_path {data_path}")
    if not lmdb_dir(data_path, partition).is_dir():
        raise DatasetError(f"{lmdb_dir(data_path, partition)} not found: build the LMDBs with "
                           f"create_lmdb.py --data_path {data_path}")
    try:
        ids = list(load_keys(keys))
    except ValueError as err:  # Recipe1MError: not a list of ids, unsafe or corrupt pickle
        raise DatasetError(f"{_one_line(err)}; rebuild with create_lmdb.py --data_path {data_path}") from None
    if not ids:
        raise EmptyPartitionError(
            f"partition {partition} of {data_path} holds 0 recipes ({keys} is empty): rebuild with "
            f"create_lmdb.py --data_path {data_path} from a Recipe1M folder whose layer1.json/layer2.json "
            f"list {partition} recipes with images")
    return ids


def check_image_root(img_path: str | Path, partitions: Iterable[str] = ()) -> Path:
    """Refuse an image root that cannot hold the images, before any image is read.

    An image lives at ``<img_path>/<partition>/<c1>/<c2>/<c3>/<c4>/<image id>``, so the root must
    be a folder and hold a folder for each of ``partitions``.

    Returns:
        ``img_path`` as a Path.

    Raises:
        ImageRootError: ``img_path`` is not a folder, or lacks ``<partition>/``.
    """
    root = Path(img_path)
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise ImageRootError(f"--img_path {root}: {what}; give the image root (the folder holding "
                             f"train/, val/, test/)")
    for partition in partitions:
        if not (root / partition).is_dir():
            raise ImageRootError(f"--img_path {root}: it has no {partition}/ folder; give the image root "
                                 f"(images are read from <img_path>/{partition}/<c1>/<c2>/<c3>/<c4>/<image id>)")
    return root


def _one_line(value: object) -> str:
    """``str(value)`` on one line (messages go into one-line errors)."""
    return " ".join(str(value).split())


class RecipeImageDataset(torch.utils.data.Dataset):
    """One partition of the indexed Recipe1M (see the module docstring for every rule).

    Args:
        data_path: folder holding ``<partition>_lmdb/``, ``<partition>_keys.pkl``, manifest.json.
        img_path: image root (``<img_path>/<partition>/<c1>/<c2>/<c3>/<c4>/<image id>``).
        partition: ``train``, ``val`` or ``test``.
        train: random image, text augmentation and train transform; else deterministic eval.
        language: the row used at evaluation (code or number); must be in the LMDB.
        text_aug: the training choice tree items (``english,de,ru,fr``, ``mask``, ``none``).
        textinputs: parts kept, a subset of ``title,ingr,inst``.
        max_imgs: training draws among the first ``max_imgs`` images of a recipe.
        image_size: side ``S`` of the image tensors.
        seed: with the epoch and the index, seeds every random draw of a sample.
        max_len: length of the token rows (default: the manifest's).
        image_backend: ``"pil"`` (the reference's pixels) or ``"fast"`` (each pixel within 1 level,
            about twice as fast per core; :mod:`data.transforms`).
        uint8: images as uint8 ``(3, S, S)`` (a quarter of the bytes; the step normalises them on its
            device with :func:`utils.imagenet.normalize_on_device`), else ImageNet-normalised float32.

    Raises:
        DatasetError: manifest or keys missing, a bad manifest, a ``language`` not in the LMDB
        (the message lists those present); its :class:`EmptyPartitionError` (0 recipes) and
        :class:`ImageRootError` (``img_path`` is not a folder holding ``<partition>/``).
        ValueError: a bad option.
    """

    def __init__(self, data_path: str | Path, img_path: str | Path, partition: str, *, train: bool,
                 language: str | int = "en", text_aug: str | None = "english,de,ru,fr",
                 textinputs: str | Sequence[str] = "title,ingr,inst", max_imgs: int = 5,
                 image_size: int = 224, seed: int = 1234, max_len: int | None = None,
                 image_backend: str = "pil", uint8: bool = False) -> None:
        self.data_path = Path(data_path)
        self.image_backend, self.uint8 = check_backend(image_backend), bool(uint8)
        self.img_path = Path(img_path)
        if partition not in PARTITIONS:
            raise DatasetError(f"unknown partition {partition!r}; expected one of {', '.join(PARTITIONS)}")
        self.partition = partition
        self.train = bool(train)
        manifest = read_manifest(self.data_path)
        self.languages: list[str] = list(manifest["languages"])
        self.special_ids: dict[str, int] = dict(manifest["special_ids"])
        self.max_len = int(max_len if max_len is not None else manifest["max_len"])
        if self.max_len < 2:
            raise ValueError(f"max_len {self.max_len} leaves no room for CLS and SEP")
        if max_imgs < 1 or image_size < 1 or seed < 0:
            raise ValueError(f"max_imgs ({max_imgs}) and image_size ({image_size}) must be >= 1 and "
                             f"seed ({seed}) >= 0")
        self.max_imgs, self.image_size, self.seed = int(max_imgs), int(image_size), int(seed)
        self.language = parse_language(language)
        if self.language not in self.languages:
            raise DatasetError(f"language {self.language!r} is not in {self.data_path / MANIFEST}; "
                               f"languages present: {', '.join(self.languages)}")
        self.part_codes = parse_textinputs(textinputs)
        self.text_aug = text_aug
        _, mask = parse_text_aug(text_aug)
        if self.train:
            self.language_probs = language_distribution(text_aug, self.languages)
        else:
            self.language_probs = {self.language: 1.0}
        self.mask_id: int | None = None
        if self.train and mask:
            if not isinstance(self.special_ids.get("mask"), int):
                raise ValueError(f"text_aug {text_aug!r} masks tokens but {self.data_path / MANIFEST} "
                                 f"has no 'mask' in special_ids")
            self.mask_id = self.special_ids["mask"]
        self._lang_codes = list(self.language_probs)
        self._lang_cdf = np.cumsum(list(self.language_probs.values()))
        self.lmdb_path = lmdb_dir(self.data_path, partition)
        self.ids: list[str] = check_partition(self.data_path, partition)
        check_image_root(self.img_path, [partition])
        # Shared memory: set_epoch in the main process is seen by persistent workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._records = RecordReader(self.lmdb_path)  # opens on first __getitem__: pickles to workers

    # ---------------------------------------------------------------- epochs
    def set_epoch(self, epoch: int) -> None:
        """Make the random draws those of ``epoch`` (call before iterating over each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())


    # ---------------------------------------------------------------- samples
    def __len__(self) -> int:
        return len(self.ids)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of every random draw of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def _draw(self, index: int) -> tuple[str, int, list[str], int, TrainParams | None, np.ndarray]:
        """Read record ``index`` and make every random draw of the sample (no image I/O).

        Returns:
            ``(recipe_id, class, image ids, picked image, transform params, tokens (max_len,))``.
        """
        n = len(self.ids)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} recipes of {self.partition}")
        index = int(index) % n
        recipe_id = self.ids[index]
        try:
            record = self._records.get(recipe_id)
        except RecordError as err:
            raise ValueError(f"{self.lmdb_path}: record {recipe_id}: {err}") from None
        if record is None:
            raise ValueError(f"{self.lmdb_path}: no record for recipe {recipe_id} listed in "
                             f"{keys_file(self.data_path, self.partition)}; rebuild with create_lmdb.py")
        if int(record.cls) < 1:
            raise ValueError(f"{self.lmdb_path}: record {recipe_id}: stored class {record.cls} < 1 "
                             f"(the LMDB stores class + 1)")
        rng = self.rng(index) if self.train else None
        # Draw order (fixed, whatever the outcome): image, transform, language, mask.
        images = record.images[:self.max_imgs]
        pick = int(rng.integers(len(images))) if (rng is not None and images) else 0
        params = draw_train_params(rng, self.image_size) if rng is not None else None
        if rng is not None:
            u = rng.random()
            code = self._lang_codes[min(int(np.searchsorted(self._lang_cdf, u, side="right")),
                                        len(self._lang_codes) - 1)]
        else:
            code = self.language
        if code not in record.langs:
            raise ValueError(f"{self.lmdb_path}: record {recipe_id} has no {code!r} row "
                             f"(rows: {', '.join(record.langs)}) although manifest.json lists it")
        row = record.langs.index(code)
        tokens = assemble_tokens(record.ids[row], record.parts[row], self.part_codes,
                                 self.special_ids["sep"], self.max_len, mask_id=self.mask_id, rng=rng)
        return recipe_id, int(record.cls) - 1, images, pick, params, tokens

    def tokens(self, index: int) -> torch.Tensor:
        """The token row ``__getitem__(index)`` gives in this epoch, without reading the image."""
        return torch.from_numpy(self._draw(index)[-1])

    def __getitem__(self, index: int) -> Sample | BadSample:
        recipe_id, cls, images, pick, params, tokens = self._draw(index)
        if not images:
            return BadSample(recipe_id, "no image entry in the LMDB record", self.image_size)
        try:
            path = image_path(self.img_path, self.partition, images[pick])
        except ValueError as err:  # a malformed image id in the record
            return BadSample(recipe_id, f"{self.lmdb_path}: {err}", self.image_size)
        try:  # train transform with params, else eval
            image = load_transformed(path, params, self.image_size, backend=self.image_backend,
                                     uint8=self.uint8)  # (3, S, S)
        except ImageLoadError as err:
            return BadSample(recipe_id, str(err), self.image_size)
        return Sample(image, torch.from_numpy(tokens), recipe_id, cls)


def collate_skip_bad(batch: Sequence[Sample | BadSample]) -> Batch:
    """Stack the good samples, set the bad ones aside, trim tokens to the longest row.

    A batch where every sample is bad gives a Batch with zero rows: images ``(0, 3, S, S)``,
    tokens ``(0, 0)``, classes ``(0,)``; callers skip it (and count ``bad``).
    """
    good = [s for s in batch if isinstance(s, Sample)]
    bad = [s for s in batch if isinstance(s, BadSample)]
    if len(good) + len(bad) != len(batch):
        raise TypeError("collate_skip_bad expects Sample or BadSample items")
    if not good:
        size = bad[0].image_size if bad else 224
        return Batch(torch.zeros((0, 3, size, size)), torch.zeros((0, 0), dtype=torch.long), [],
                     torch.zeros(0, dtype=torch.long), bad)
    if all(s.image.stride(0) == 1 for s in good):  # interleaved pixels (the fast path): stacked as they are
        images = torch.stack([s.image.permute(1, 2, 0) for s in good]).permute(0, 3, 1, 2)  # (B, 3, S, S) channels-last
    else:
        images = torch.stack([s.image for s in good])  # (B, 3, S, S)
    tokens = torch.stack([s.tokens for s in good])  # (B, L)
    positions = torch.arange(1, tokens.shape[1] + 1) * (tokens != 0)  # (B, L)
    longest = int(positions.amax())
    classes = torch.tensor([s.cls for s in good], dtype=torch.long)
    return Batch(images, tokens[:, :longest].contiguous(), [s.recipe_id for s in good], classes, bad)


class BadImageTracker:
    """Counts the distinct recipes of a partition without a readable image; stops above a fraction.

    Args:
        partition: named in the messages.
        total: recipes in the partition.
        max_fraction: ``--max_bad_images``; more than ``max_fraction * total`` bad recipes raises.
        img_root: the image root (``--img_path``), named in the message that stops the run.
    """

    def __init__(self, partition: str, total: int, max_fraction: float = 0.01,
                 img_root: str | Path | None = None) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise InputError(f"--max_bad_images must be a fraction in [0, 1], got {max_fraction}")
        self.partition, self.total, self.max_fraction = partition, int(total), float(max_fraction)
        self.img_root = Path(img_root) if img_root is not None else None
        self.bad: dict[str, str] = {}  # recipe id -> first reason seen

    @property
    def count(self) -> int:
        return len(self.bad)

    def update(self, bad_list: Iterable[BadSample]) -> int:
        """Record ``bad_list`` (e.g. ``Batch.bad``); log each new id once (while under the limit).

        Returns:
            The number of recipes not seen before.

        Raises:
            BadImageLimitError: more than ``max_fraction`` of the partition's recipes have no
                readable image (one line: the count, the image root, the first recipe and why).
        """
        new = []
        for item in bad_list:
            if item.recipe_id not in self.bad:
                self.bad[item.recipe_id] = item.reason
                new.append(item)
        if self.count <= self.max_fraction * self.total:
            for item in new:  # over the limit the one error line says it all
                logger.warning("%s: skipping recipe %s: %s", self.partition, item.recipe_id, item.reason)
            return len(new)
        first_id, first_reason = next(iter(self.bad.items()))
        where = f" under {self.img_root}" if self.img_root is not None else ""
        raise BadImageLimitError(
            f"{self.count} of {self.total} recipes of {self.partition} have no readable image{where}, "
            f"above --max_bad_images {self.max_fraction:g}; first: recipe {first_id}: "
            f"{_one_line(first_reason)}; check --img_path (or raise --max_bad_images)")

    def summary(self) -> str:
        """One line for the logs, e.g. ``2 of 5000 recipes of val had no readable image (skipped)``."""
        return f"{self.count} of {self.total} recipes of {self.partition} had no readable image (skipped)"
