"""Index Recipe1M into LMDBs of token rows: ``python create_lmdb.py --r1m_path R --data_path D``.

Writes into ``--data_path``: ``{train,val,test}_lmdb/``, ``{train,val,test}_keys.pkl``,
``tokenizer/`` and ``manifest.json``. What is indexed and dropped, the token rows and the record
format: docs/data.md#what-create_lmdbpy-indexes; the order of the checks, memory, speed and the
atomic swap: docs/data.md#how-create_lmdbpy-builds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from data.langs import LANGS, parse_language
from data.lmdb_build import (
    BUILD_PREFIX,
    JOURNAL,
    LOCK,
    CreateLmdbError,
    StagedRows,
    Stager,
    crash_hook,
    locked,
    recover,
    swap_in,
)
from data.lmdb_format import (
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER_DIR,
    Record,
    encode_record,
    keys_file,
    lmdb_dir,
)
from data.query import part_texts
from data.recipe1m import (
    PARTITIONS,
    Recipe1MError,
    image_id_problem,
    iter_layer1,
    layer1_path,
    load_classes,
    load_keys,
    load_layer2,
    write_keys,
)
from data.tokenizer import (
    VOCAB_TXT,
    ChunkEncoder,
    TokenizerError,
    WordCounter,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    train_wordpiece_from_counts,
)
from utils.cli import HelpFormatter, run_main
from utils.io import atomic_write_json
from utils.lineage import lmdb_lineage
from utils.runs import DEFAULT_DATA_PATH

BAD_IMAGES_NAMED = 3  # recipes named by the bad_image_id warning
COMMIT_BYTES = 8 << 20  # record bytes per LMDB write transaction (its dirty pages stay in memory)


# --------------------------------------------------------------------------- the passes over layer1

class Index:
    """The recipes being indexed, numbered in the order layer1.json lists them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.of: dict[str, int] = {}
        self.partition: list[int] = []  # index into PARTITIONS

    def add(self, rid: str, partition: int) -> int:
        index = self.of[rid] = len(self.ids)
        self.ids.append(rid)
        self.partition.append(partition)
        return index

    def __len__(self) -> int:
        return len(self.ids)


def select_candidates(keys: dict[str, list[str] | None], layer2: dict[str, list[str]],
                      bad_images: dict[str, tuple[str, str]], dropped: dict[str, Counter]):
    """The loaded keys lists (None: no keys file): ``(wanted id -> partition number, ids listed
    anywhere, fallback splits)``; the listed recipes that cannot be indexed are counted in ``dropped``."""
    wanted: dict[str, int] = {}
    listed: set[str] = set()
    fallback: set[str] = set()
    for p, partition in enumerate(PARTITIONS):
        if keys[partition] is None:
            fallback.add(partition)
            continue
        for rid in keys[partition]:
            if rid in listed:
                dropped[partition]["duplicate"] += 1
            elif rid in bad_images:
                dropped[partition]["bad_image_id"] += 1
            elif not layer2.get(rid):
                dropped[partition]["no_image"] += 1
            else:
                wanted[rid] = p
            listed.add(rid)
    return wanted, listed, fallback


def scan_english(path: Path, layer2, bad_images, wanted, listed, fallback, dropped, *, stager,
                 counter) -> tuple[Index, int]:
    """Stream ``layer1.json``: choose the indexed recipes, stage and/or count their texts."""
    index, seen = Index(), 0
    for recipe in tqdm(iter_layer1(path, "en"), desc="layer1.json", unit=" recipes", mininterval=1):
        seen += 1
        p = wanted.get(recipe.id)
        if p is None:
            if recipe.partition not in fallback or recipe.id in listed:
                continue
            if not layer2.get(recipe.id):
                dropped[recipe.partition]["bad_image_id" if recipe.id in bad_images else "no_image"] += 1
                listed.add(recipe.id)
                continue
            p = PARTITIONS.index(recipe.partition)
        if recipe.id in index.of:
            raise Recipe1MError(f"{path}: recipe {recipe.id!r} appears twice")
        i = index.add(recipe.id, p)
        texts = part_texts(recipe.title, recipe.ingredients, recipe.instructions)
        if stager is not None:
            stager.add(i, texts)
        if counter is not None and p == 0:
            for text in texts:
                counter.add(text)
    return index, seen


def scan_language(path: Path, lang: str, index: Index, total: int, *, stager, counter) -> np.ndarray:
    """Stream a translated layer1 file; stage and/or count the indexed recipes' texts.

    Returns:
        The indices of the indexed recipes the file lacks.
    """
    found = np.zeros(len(index), dtype=bool)
    for recipe in tqdm(iter_layer1(path, lang), desc=path.name, total=total, unit=" recipes", mininterval=1):
        i = index.of.get(recipe.id)
        if i is None:
            continue
        if found[i]:
            raise Recipe1MError(f"{path}: recipe {recipe.id!r} appears twice")
        found[i] = True
        texts = part_texts(recipe.title, recipe.ingredients, recipe.instructions)
        if stager is not None:
            stager.add(i, texts)
        if counter is not None and index.partition[i] == 0:
            for text in texts:
                counter.add(text)
    return np.flatnonzero(~found)


# --------------------------------------------------------------------------- records

def write_partition(out: Path, rows: list[int], index: Index, staged: list[tuple[str, StagedRows]],
                    images: list[list[str]], classes: np.ndarray, cls_id: int, max_len: int,
                    written: list[int]) -> None:
    """Write the LMDB of one partition: one record per index in ``rows``, in key order.

    ``staged`` holds ``(language, rows)`` in row order; ``written`` counts records over all calls.
    """
    import lmdb

    langs = [lang for lang, _ in staged]
    n_langs = len(staged)
    record_bytes = n_langs * max_len * 5 + 4096  # ids int32 + parts int8 + header
    env = lmdb.open(str(out), map_size=len(rows) * 2 * (record_bytes + 8192) + (64 << 20),
                    subdir=True, sync=False, metasync=False, map_async=False, readahead=False)
    try:
        txn, pending = env.begin(write=True), 0
        for i in tqdm(sorted(rows, key=index.ids.__getitem__), desc=out.name, unit=" recipes", mininterval=1):
            ids = np.zeros((n_langs, max_len), dtype=np.int32)  # (L, max_len)
            parts = np.zeros((n_langs, max_len), dtype=np.int8)  # (L, max_len)
            for row, (_, rows_of_lang) in enumerate(staged):
                rows_of_lang.fill(i, ids[row], parts[row], cls_id)
            value = encode_record(Record(langs=langs, ids=ids, parts=parts, cls=int(classes[i]),
                                         images=images[i]))
            txn.put(index.ids[i].encode("utf-8"), value, append=True)
            written[0] += 1
            crash_hook("records", written[0])
            pending += len(value)
            if pending >= COMMIT_BYTES:
                txn.commit()
                txn, pending = env.begin(write=True), 0
        txn.commit()
        env.sync(True)
    finally:
        env.close()


@contextlib.contextmanager
def tokenizer_threads(workers: int):
    """Set the tokenizers library's parallelism for the duration of the run (docs/data.md#how-create_lmdbpy-builds)."""
    saved = {key: os.environ.get(key) for key in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    if workers > 0:
        os.environ["RAYON_NUM_THREADS"] = str(workers)
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if workers == 1 else "true"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- the run

def parse_languages(value: str | None) -> list[str] | None:
    """``--languages``: comma-separated codes or numbers, English included; None = automatic."""
    if value is None:
        return None
    try:
        asked = {parse_language(v) for v in value.replace(" ", "").split(",") if v}
    except ValueError as err:
        raise CreateLmdbError(f"--languages {value!r}: {err}") from None
    if "en" not in asked:
        raise CreateLmdbError(f"--languages {value!r}: English (en) is required")
    return [lang for lang in LANGS if lang in asked]


class Inputs(NamedTuple):
    """Everything read and checked before the passes over ``layer1.json`` (:func:`check_inputs`)."""

    asked: list[str] | None  # --languages, None = automatic
    candidates: list[str]  # the other languages whose layer1 file exists
    tokenizer: Any  # None with --tokenizer train
    keys: dict[str, list[str] | None]  # split -> its keys file's ids, None without a keys file
    id2class: dict[str, int]  # classes1M.pkl's first dict, kept for the recipes of layer2 only
    layer2: dict[str, list[str]]  # recipe id -> image ids, without the refused recipes
    bad_images: dict[str, tuple[str, str]]  # refused recipe id -> (its first bad image id, why)
    empty: dict[str, str]  # split -> why it is empty (known so far: a keys file holding [])


def _check_head(path: Path, lang: str) -> None:
    """Parse the first entry of a layer1 file (one chunk): a wrong or corrupt file fails here."""
    with contextlib.closing(iter_layer1(path, lang)) as recipes:
        next(recipes, None)


def check_required_files(r1m: Path) -> None:
    """The files every build reads exist (checked before ``--data_path`` is created).

    Raises:
        CreateLmdbError: naming the first missing file.
    """
    for path in (layer1_path(r1m, "en"), r1m / "layer2.json", r1m / "classes1M.pkl"):
        if not path.is_file():
            raise CreateLmdbError(f"{path} not found (--r1m_path {r1m})")


def check_inputs(args: argparse.Namespace) -> Inputs:
    """Read and check every input before the long work, the cheapest first.

    The files exist; the first entry of each layer1 file parses; the tokenizer loads; each keys
    file and ``classes1M.pkl`` load (restricted unpickler); ``layer2.json`` is read whole, and its
    recipes listing an image id that ``image_path`` refuses are set aside. Warns (one line each)
    about a missing keys file and about one that lists no recipe.

    Raises:
        CreateLmdbError, Recipe1MError: naming the file (and the entry).
    """
    r1m = Path(args.r1m_path)
    check_required_files(r1m)
    asked = parse_languages(args.languages)
    for lang in asked or []:
        if not layer1_path(r1m, lang).is_file():
            raise CreateLmdbError(f"{layer1_path(r1m, lang)} not found, but --languages asks for {lang}")
    candidates = [lang for lang in (asked or LANGS) if lang != "en" and layer1_path(r1m, lang).is_file()]
    for lang in ["en", *candidates]:
        _check_head(layer1_path(r1m, lang), lang)
    try:
        tokenizer = None if args.tokenizer == "train" else load_tokenizer(args.tokenizer)
    except TokenizerError as err:
        raise CreateLmdbError(str(err)) from None

    keys: dict[str, list[str] | None] = {}
    empty: dict[str, str] = {}
    for partition in PARTITIONS:
        path = keys_file(r1m, partition)
        if not path.is_file():
            keys[partition] = None
            print(f"warning: {path} not found: indexing every {partition} recipe of layer1.json "
                  f"that has an image", file=sys.stderr)
            continue
        keys[partition] = load_keys(path)
        if not keys[partition]:
            empty[partition] = f"{path} lists no recipe"
            print(f"warning: the {partition} split will be empty: {empty[partition]}", file=sys.stderr)
    id2class, _ = load_classes(r1m / "classes1M.pkl")

    layer2_path = r1m / "layer2.json"
    layer2 = load_layer2(layer2_path)
    bad_images: dict[str, tuple[str, str]] = {}
    for rid, image_ids in layer2.items():
        for image_id in image_ids:
            problem = image_id_problem(image_id)
            if problem is not None:
                bad_images[rid] = (image_id, problem)
                break
    for rid in bad_images:
        del layer2[rid]
    if bad_images:
        shown = list(bad_images.items())[:BAD_IMAGES_NAMED]
        first = "; ".join(f"recipe {rid!r}, image id {image_id!r} ({problem})"
                          for rid, (image_id, problem) in shown)
        print(f"warning: {layer2_path}: {len(bad_images)} recipe(s) list an image id outside the "
              f"<partition>/<c1>/<c2>/<c3>/<c4>/<id> layout, not indexed (dropped as bad_image_id); "
              f"first {len(shown)}: {first}", file=sys.stderr)
    # Only a recipe with images can be indexed: the rest of classes1M.pkl is not kept.
    id2class = {rid: cls for rid, cls in id2class.items() if rid in layer2}
    return Inputs(asked, candidates, tokenizer, keys, id2class, layer2, bad_images, empty)


def empty_partitions(r1m: Path, listed: dict[str, int | None], known: dict[str, str], counts: dict[str, int],
                     dropped: dict[str, Counter]) -> dict[str, str]:
    """Split -> why it holds no recipe, for every empty split; warns about those not yet warned of.

    Args:
        listed: split -> the number of ids its keys file lists (None: no keys file).
        known: the empty splits already warned of (``Inputs.empty``).
        counts: split -> indexed recipes; dropped: split -> reason -> count.
    """
    empty = {}
    for partition in PARTITIONS:
        if counts[partition]:
            continue
        why = known.get(partition)
        if why is None:
            lost = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped[partition].items()))
            lost = f" (dropped: {lost})" if lost else ""
            if listed[partition] is None:
                why = (f"{layer1_path(r1m, 'en')} has no {partition} recipe with an image in "
                       f"{r1m / 'layer2.json'}{lost}")
            else:
                why = (f"none of the {listed[partition]} recipes listed in {keys_file(r1m, partition)} "
                       f"has both an image in layer2.json and an entry in layer1.json{lost}")
            print(f"warning: the {partition} split is empty: {why}", file=sys.stderr)
        empty[partition] = why
    return empty


class _Staging:
    """The staging files of one build (one per language), their rows and the tokenizing thread.

    Leaving the ``with`` block, finished or not, stops the thread, closes the staged rows and
    deletes the files.
    """

    def __init__(self, build: Path, max_len: int) -> None:
        self.max_len = max_len
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.paths = {lang: build / f".stage_{lang}.i32" for lang in LANGS}
        self.rows: dict[str, StagedRows] = {}  # language -> its finished rows

    def stager(self, lang: str, encoder: ChunkEncoder | None) -> Stager | None:
        """A stager of ``lang``'s token rows; None without an encoder (the vocabulary is learnt first)."""
        return None if encoder is None else Stager(self.paths[lang], encoder, self.max_len, self.executor)

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.executor.shutdown(wait=True)
        for rows in self.rows.values():
            rows.close()
        for path in self.paths.values():
            path.unlink(missing_ok=True)


def _index_english(r1m: Path, inputs: Inputs, dropped: dict[str, Counter], staging: _Staging,
                   encoder: ChunkEncoder | None) -> tuple[Index, int, WordCounter | None]:
    """Choose the indexed recipes in one pass over ``layer1.json``, staging (or, without an encoder,
    counting the train split's words of) their English texts.

    Returns:
        ``(index, recipes in layer1.json, word counter or None)``.

    Raises:
        CreateLmdbError: no recipe is left to index.
    """
    wanted, listed, fallback = select_candidates(inputs.keys, inputs.layer2, inputs.bad_images, dropped)
    stager = staging.stager("en", encoder)
    counter = WordCounter() if encoder is None else None
    index, n_layer1 = scan_english(layer1_path(r1m, "en"), inputs.layer2, inputs.bad_images, wanted, listed,
                                   fallback, dropped, stager=stager, counter=counter)
    for rid, p in wanted.items():
        if rid not in index.of:
            dropped[PARTITIONS[p]]["not_in_layer1"] += 1
    if not len(index):
        raise CreateLmdbError(f"no recipe to index in {r1m}: none of the listed recipes has both an "
                              f"image in layer2.json and an entry in layer1.json")
    if stager is not None:
        staging.rows["en"] = stager.finish(len(index))
    return index, n_layer1, counter


def _keys_and_images(layer2: dict[str, list[str]], index: Index,
                     max_imgs: int) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Each split's keys in ``layer2.json`` order, and each indexed recipe's first ``max_imgs`` image ids."""
    keys: dict[str, list[str]] = {p: [] for p in PARTITIONS}
    images: list[list[str]] = [[] for _ in range(len(index))]
    for rid, image_ids in layer2.items():
        i = index.of.get(rid)
        if i is not None:
            keys[PARTITIONS[index.partition[i]]].append(rid)
            images[i] = image_ids[:max_imgs]
    return keys, images


def _stage_languages(r1m: Path, inputs: Inputs, index: Index, n_layer1: int, staging: _Staging,
                     encoder: ChunkEncoder | None, word_counts: Counter | None) -> list[str]:
    """Stage (or count into ``word_counts``) the other languages that cover every indexed recipe.

    Returns:
        The indexed languages, English first.

    Raises:
        CreateLmdbError: a language asked for with ``--languages`` lacks an indexed recipe.
    """
    languages = ["en"]
    for lang in inputs.candidates:
        path = layer1_path(r1m, lang)
        stager = staging.stager(lang, encoder)
        lang_counts = WordCounter() if word_counts is not None else None
        missing = scan_language(path, lang, index, n_layer1, stager=stager, counter=lang_counts)
        if missing.size:
            if stager is not None:
                stager.discard()
            message = (f"{path} lacks {missing.size} of the {len(index)} indexed recipes "
                       f"(first: id {index.ids[missing[0]]!r})")
            if inputs.asked:
                raise CreateLmdbError(f"{message}; --languages asks for {lang}")
            print(f"warning: {message}: language {lang} is not indexed", file=sys.stderr)
            continue
        languages.append(lang)
        if stager is not None:
            staging.rows[lang] = stager.finish(len(index))
        if lang_counts is not None:
            word_counts.update(lang_counts.counts())
    return languages


def _learn_vocabulary(args: argparse.Namespace, word_counts: Counter, languages: list[str], index: Index,
                      n_layer1: int, staging: _Staging) -> Any:
    """``--tokenizer train``: learn the WordPiece vocabulary, then stage every language with it.

    Raises:
        CreateLmdbError: the train split has no text.
    """
    if not word_counts:
        raise CreateLmdbError("--tokenizer train: the train split has no text to learn a vocabulary from")
    print(f"learning a WordPiece vocabulary of {args.vocab_size} tokens from {len(word_counts)} "
          f"distinct words ({', '.join(languages)})", file=sys.stderr)
    tokenizer = train_wordpiece_from_counts(word_counts, args.vocab_size)
    encoder = ChunkEncoder(tokenizer)
    for lang in languages:
        stager = staging.stager(lang, encoder)
        scan_language(layer1_path(Path(args.r1m_path), lang), lang, index, n_layer1, stager=stager, counter=None)
        staging.rows[lang] = stager.finish(len(index))
    return tokenizer


def _manifest(args: argparse.Namespace, build: Path, keys: dict[str, list[str]], languages: list[str],
              tokenizer: Any, ids: dict[str, int], dropped: dict[str, Counter], empty: dict[str, str]) -> dict:
    """``manifest.json`` (docs/data.md#the-data-folder), once ``tokenizer/`` is in ``build``."""
    return {
        "format_version": FORMAT_VERSION,
        "counts": {p: len(keys[p]) for p in PARTITIONS},
        "languages": languages,
        "tokenizer": args.tokenizer,
        "vocab_size": len(tokenizer),
        "max_len": args.max_len,
        "max_imgs": args.maxImgs,
        "special_ids": ids,
        "dropped": {p: dict(sorted(dropped[p].items())) for p in PARTITIONS},
        "empty_partitions": empty,
        # What the token ids mean, as a fingerprint the later stages check (utils/lineage.py).
        "lineage": lmdb_lineage(build / TOKENIZER_DIR / VOCAB_TXT, len(tokenizer), ids, args.max_len,
                                tokenizer=args.tokenizer, languages=languages),
    }


def build_outputs(args: argparse.Namespace, build: Path) -> tuple[dict, int]:
    """Write every output into the folder ``build``; returns the manifest and the classless count.

    Every input is checked first; then one pass over ``layer1.json`` chooses the recipes and stages
    their English token rows, one pass per other language stages its rows (with ``--tokenizer
    train``: counts words, learns the vocabulary, and stages every language again); the records
    are assembled from the staged rows, split by split; the tokenizer and ``manifest.json`` last.
    """
    r1m = Path(args.r1m_path)
    inputs = check_inputs(args)  # every file checked before the long work
    training = args.tokenizer == "train"
    dropped = {p: Counter() for p in PARTITIONS}
    n_listed = {p: None if ids is None else len(ids) for p, ids in inputs.keys.items()}
    with _Staging(build, args.max_len) as staging:
        encoder = None if training else ChunkEncoder(inputs.tokenizer)
        index, n_layer1, counter = _index_english(r1m, inputs, dropped, staging, encoder)
        keys, images = _keys_and_images(inputs.layer2, index, args.maxImgs)
        empty = empty_partitions(r1m, n_listed, inputs.empty, {p: len(keys[p]) for p in PARTITIONS}, dropped)
        id2class = inputs.id2class
        classes = np.fromiter((id2class.get(rid, 0) + 1 for rid in index.ids), dtype=np.int64, count=len(index))
        classless = sum(rid not in id2class for rid in index.ids)
        del id2class
        inputs = inputs._replace(keys={}, layer2={}, id2class={})  # not needed any more: freed here

        word_counts = counter.counts() if training else None
        languages = _stage_languages(r1m, inputs, index, n_layer1, staging, encoder, word_counts)
        tokenizer = _learn_vocabulary(args, word_counts, languages, index, n_layer1, staging) if training \
            else inputs.tokenizer
        ids = special_ids(tokenizer)

        written = [0]
        rows_in_order = [(lang, staging.rows[lang]) for lang in languages]
        for p, partition in enumerate(PARTITIONS):
            rows = [i for i in range(len(index)) if index.partition[i] == p]
            write_partition(lmdb_dir(build, partition), rows, index, rows_in_order, images, classes,
                            ids["cls"], args.max_len, written)
            write_keys(keys_file(build, partition), keys[partition])
    save_tokenizer(tokenizer, build / TOKENIZER_DIR)
    manifest = _manifest(args, build, keys, languages, tokenizer, ids, dropped, empty)
    atomic_write_json(build / MANIFEST, manifest, indent=2, sort_keys=True)
    return manifest, classless


def get_parser() -> argparse.ArgumentParser:
    """The command-line options of ``create_lmdb.py``."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s [--r1m_path R1M_PATH] [--data_path DATA_PATH] [options]",
        description="Index Recipe1M into LMDBs of token rows, keys files, a tokenizer and manifest.json\n"
                    "(docs/data.md#what-create_lmdbpy-indexes).",
        formatter_class=HelpFormatter)
    parser.add_argument("--r1m_path", default="data/Recipe1M",
                        help="folder of layer1.json, layer1_<lang>.json, layer2.json, classes1M.pkl and "
                             "{train,val,test}_keys.pkl")
    parser.add_argument("--data_path", default=DEFAULT_DATA_PATH,
                        help="output folder for {train,val,test}_lmdb/, {train,val,test}_keys.pkl, "
                             "tokenizer/ and manifest.json")
    parser.add_argument("--tokenizer", default="bert-base-multilingual-cased",
                        help="a Hugging Face hub name or a local tokenizer folder, or 'train' to learn a "
                             "cased WordPiece vocabulary, deterministically, from the train split in every "
                             "indexed language")
    parser.add_argument("--vocab_size", type=int, default=32000,
                        help="vocabulary size learnt with --tokenizer train, special tokens included")
    parser.add_argument("--languages", default=None,
                        help="comma-separated language codes or numbers to index, en required "
                             "(0 en, 1 de-en, 2 ru-en, 3 de, 4 ru, 5 fr); each must cover every indexed "
                             "recipe; None: every language whose layer1 file exists and does")
    parser.add_argument("--max_len", type=int, default=512, help="length of the token rows")
    parser.add_argument("--maxImgs", type=int, default=5, help="image ids kept per recipe")
    parser.add_argument("--workers", type=int, default=0,
                        help="tokenizer threads (the tokenizers library's pool, set at its first use in "
                             "the process); 0 = every core, 1 = none in parallel")
    return parser


def _summary(manifest: dict, classless: int, data_path: Path, seconds: float) -> str:
    counts = ", ".join(f"{p} {manifest['counts'][p]}" for p in PARTITIONS)
    dropped = "; ".join(
        f"{p} " + (", ".join(f"{reason} {n}" for reason, n in manifest["dropped"][p].items()) or "none")
        for p in PARTITIONS)
    empty = manifest.get("empty_partitions") or {}
    empty = f"; empty splits: {', '.join(empty)}" if empty else ""
    return (f"create_lmdb: indexed {counts} recipes in {', '.join(manifest['languages'])} "
            f"(tokenizer {manifest['tokenizer']}, vocabulary {manifest['vocab_size']}, max_len "
            f"{manifest['max_len']}); dropped: {dropped}; {classless} without a classes1M class "
            f"(stored as background){empty}; wrote {data_path} in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> dict:
    """Build the outputs and swap them into ``--data_path``; returns the manifest."""
    return run_main(lambda: _main(argv))


def _main(argv: list[str] | None) -> dict:
    parser = get_parser()
    args = parser.parse_args(argv)
    for flag, value, low in (("--max_len", args.max_len, 2), ("--maxImgs", args.maxImgs, 1),
                             ("--vocab_size", args.vocab_size, 16), ("--workers", args.workers, 0)):
        if value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    start = time.perf_counter()
    data_path = Path(args.data_path)
    created = not data_path.exists()
    try:
        if data_path.exists() and not data_path.is_dir():
            raise CreateLmdbError(f"--data_path {data_path} is not a folder")
        check_required_files(Path(args.r1m_path))  # a typo in --r1m_path creates nothing
        data_path.mkdir(parents=True, exist_ok=True)
        with locked(data_path):
            if recover(data_path):
                print(f"warning: {data_path}: a swap cut short by an earlier run was rolled back",
                      file=sys.stderr)
            build = data_path / f"{BUILD_PREFIX}{os.getpid()}"
            build.mkdir()
            try:
                with tokenizer_threads(args.workers):
                    manifest, classless = build_outputs(args, build)
                swap_in(build, data_path)
            except BaseException:
                if (data_path / JOURNAL).exists():
                    recover(data_path)  # an error inside the swap: put the previous output back
                else:
                    shutil.rmtree(build, ignore_errors=True)
                raise
    except BaseException as err:
        if created:  # a run that failed leaves no folder it made (only its lock file was in it)
            (data_path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                data_path.rmdir()
        if isinstance(err, TokenizerError):  # not an InputError: run_main would not catch it
            raise CreateLmdbError(str(err)) from None
        raise
    print(_summary(manifest, classless, data_path, time.perf_counter() - start))
    return manifest


if __name__ == "__main__":
    main()
