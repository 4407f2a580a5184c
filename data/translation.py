"""Corpus machinery of ``translate_text.py``: unique sentences, fixed batches, a crash-safe cache.

The translation of a Recipe1M layer1 file runs in three steps:

1. :func:`collect_unique` streams the source once and keeps every distinct non-empty text
   (Recipe1M repeats many lines: "1 cup sugar", "salt and pepper"), sorted by
   ``(character length, text)`` so that batches hold sentences of similar length (little
   padding) and the order does not depend on the file or on the process.
2. The sorted list is cut into fixed batches of ``batch_size`` sentences. Beam search depends on
   the padding of a batch, so the batch boundaries are part of the result: they are fixed by
   the sorted list and the batch size alone, and a rerun, a resumed run or another shard forms
   exactly the same batches. Each finished batch is appended to a :class:`TranslationCache`
   file (one JSON line, flushed and fsynced); ``--shard i/n`` takes batches ``i, i+n, ...``.
3. :func:`write_layer1` streams the source a second time and writes ``layer1_<LANG>.json``
   atomically, each text replaced by its translation (empty texts stay empty, in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from data.recipe1m import Recipe
from utils.io import atomic_write, atomic_write_json

TranslateFn = Callable[[list[str]], list[str]]
CACHE_FORMAT = 1  # bump when the cache layout or the sort order changes
_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl$")


class MissingTranslationError(ValueError):
    """A source text has no translation in the table; the message names the file and the recipe."""


def is_empty(text: str) -> bool:
    """A text that is kept out of the model (empty or whitespace only) and written back as ``""``."""
    return not text.strip()


def sort_key(text: str) -> tuple[int, str]:
    """Order of the unique sentences: by character length, ties broken by the text itself."""
    return len(text), text


@dataclass
class CorpusStats:
    """Counts of one pass over a layer1 file."""

    recipes: int = 0
    texts: int = 0  # titles + ingredient lines + instruction lines, empty ones included
    empty: int = 0  # texts kept out of the model
    sentences: int = 0  # non-empty texts (what the reference code translated one by one)
    unique: int = 0  # distinct non-empty texts (what this code translates)

    def summary(self) -> str:
        """One line for the log."""
        ratio = self.sentences / self.unique if self.unique else 0.0
        return (f"{self.recipes} recipes, {self.texts} texts ({self.empty} empty), "
                f"{self.sentences} sentences to translate, {self.unique} unique ({ratio:.2f}x fewer)")

    def to_dict(self) -> dict[str, int]:
        """Plain dict (for JSON and tests)."""
        return asdict(self)


def recipe_texts(recipe: Recipe) -> Iterator[str]:
    """The texts of a recipe in a fixed order: title, ingredients, instructions."""
    yield recipe.title
    yield from recipe.ingredients
    yield from recipe.instructions


def collect_unique(recipes: Iterable[Recipe]) -> tuple[list[str], CorpusStats]:
    """Distinct non-empty texts of ``recipes``, sorted by :func:`sort_key`, and the counts.

    Memory: one copy of each distinct text (the recipes are streamed).
    """
    stats = CorpusStats()
    seen: set[str] = set()
    for recipe in recipes:
        stats.recipes += 1
        for text in recipe_texts(recipe):
            stats.texts += 1
            if is_empty(text):
                stats.empty += 1
                continue
            stats.sentences += 1
            seen.add(text)
    unique = sorted(seen, key=sort_key)
    stats.unique = len(unique)
    return unique, stats


def corpus_digest(unique: Sequence[str]) -> str:
    """SHA-256 of the sorted unique sentences (length-prefixed, so no separator is ambiguous)."""
    hasher = hashlib.sha256()
    for text in unique:
        data = text.encode("utf-8")
        hasher.update(f"{len(data)}:".encode())
        hasher.update(data)
    return hasher.hexdigest()


def batch_digest(sources: Sequence[str]) -> str:
    """Short digest of one batch's source sentences, stored with its translations."""
    return corpus_digest(sources)[:16]


def num_batches(num_sentences: int, batch_size: int) -> int:
    """Number of fixed batches over ``num_sentences`` sorted sentences."""
    return -(-num_sentences // batch_size)


def batch_slice(index: int, batch_size: int, num_sentences: int) -> slice:
    """The sentences of batch ``index`` in the sorted unique list."""
    return slice(index * batch_size, min((index + 1) * batch_size, num_sentences))


def shard_batches(total: int, shard: int, num_shards: int) -> list[int]:
    """Batches of shard ``shard`` of ``num_shards``: ``shard, shard + num_shards, ...``.

    Round-robin over length-sorted batches gives every shard the same mix of short and long ones.
    """
    return list(range(shard, total, num_shards))


def parse_shard(value: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; raises ``ValueError`` with the expected form."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {value!r}")
    return int(match[1]), int(match[2])


def cache_key(settings: dict[str, Any]) -> str:
    """16 hex characters identifying a translation run's settings (see :class:`TranslationCache`)."""
    text = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class TranslationCache:
    """Append-only on-disk record of finished batches, one folder per run settings.

    Folder: ``<root>/<key>/`` where ``key`` hashes ``settings`` (model identity, beam,
    max_length, precision, batch size and the corpus digest, so batch indices always mean the
    same sentences); ``meta.json`` there spells the settings out. Each process appends to its own
    ``shard-<i>-of-<n>.jsonl``; each line is one finished batch
    ``{"batch": b, "digest": d, "translations": [...]}``, flushed and fsynced. A partial last line
    (a kill during the write) is ignored when reading and cut off before appending.

    Args:
        root: the cache root for one target language.
        settings: plain JSON values; everything that changes the translations.
    """

    def __init__(self, root: str | os.PathLike, settings: dict[str, Any]):
        self.settings = dict(settings)
        self.key = cache_key(self.settings)
        self.dir = Path(root) / self.key

    def prepare(self) -> None:
        """Create the folder and its ``meta.json`` (once)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            atomic_write_json(meta, {"format": CACHE_FORMAT, **self.settings}, indent=1)

    def shard_files(self) -> list[tuple[int, int, Path]]:
        """``(shard, num_shards, path)`` of every shard file present, sorted by name."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.iterdir()):
            match = _SHARD_FILE.match(path.name)
            if match:
                found.append((int(match[1]), int(match[2]), path))
        return found

    def load(self, unique: Sequence[str], batch_size: int) -> dict[int, list[str]]:
        """Finished batches ``{batch index: translations}`` from every shard file.

        A record is kept only when its index is in range, it holds one string per source
        sentence and its digest matches the batch's sources; anything else (a partial last line,
        a foreign record) is skipped.
        """
        total = num_batches(len(unique), batch_size)
        digests: dict[int, str] = {}
        done: dict[int, list[str]] = {}
        for _, _, path in self.shard_files():
            for record in _read_records(path):
                index = record.get("batch")
                out = record.get("translations")
                if (type(index) is not int or not 0 <= index < total or index in done
                        or not isinstance(out, list)):
                    continue
                span = batch_slice(index, batch_size, len(unique))
                if len(out) != span.stop - span.start or not all(isinstance(t, str) for t in out):
                    continue
                if index not in digests:
                    digests[index] = batch_digest(unique[span])
                if record.get("digest") == digests[index]:
                    done[index] = out
        return done

    def writer(self, shard: int, num_shards: int) -> CacheWriter:
        """An appender to this shard's file (call :meth:`prepare` first)."""
        return CacheWriter(self.dir / f"shard-{shard}-of-{num_shards}.jsonl")


def _read_records(path: Path) -> Iterator[dict]:
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return  # partial last line: the process was killed while writing it
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                yield record


class CacheWriter:
    """Appends finished batches to one shard file; each record is on disk when ``append`` returns."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> CacheWriter:
        _cut_partial_line(self.path)
        self._handle = open(self.path, "ab")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def append(self, index: int, sources: Sequence[str], translations: Sequence[str]) -> None:
        """Write one batch record, flush and fsync it."""
        assert self._handle is not None, "use CacheWriter as a context manager"
        record = {"batch": index, "digest": batch_digest(sources), "translations": list(translations)}
        self._handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


def _cut_partial_line(path: Path) -> None:
    """Truncate ``path`` after its last newline, so the next append starts on a fresh line."""
    if not path.exists():
        return
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        keep, step = size, 1 << 16
        while keep > 0:  # scan backwards for the last b"\n"
            start = max(0, keep - step)
            handle.seek(start)
            chunk = handle.read(keep - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            keep = start
        if keep != size:
            handle.truncate(keep)


def translate_batches(unique: Sequence[str], batch_size: int, todo: Iterable[int],
                      translate_fn: TranslateFn, writer: CacheWriter,
                      progress: Callable[[int], None] | None = None) -> None:
    """Translate the batches ``todo`` of the sorted unique list and append each to ``writer``.

    Raises:
        RuntimeError: ``translate_fn`` did not return one string per sentence.
    """
    for index in todo:
        sources = list(unique[batch_slice(index, batch_size, len(unique))])
        out = list(translate_fn(sources))
        if len(out) != len(sources) or not all(isinstance(t, str) for t in out):
            raise RuntimeError(f"batch {index}: the translator returned {len(out)} values "
                               f"for {len(sources)} sentences; expected one string each")
        writer.append(index, sources, out)
        if progress is not None:
            progress(len(sources))


def translation_table(unique: Sequence[str], batch_size: int,
                      done: dict[int, list[str]]) -> dict[str, str]:
    """``{source sentence: translation}`` from the finished batches (all must be present)."""
    table: dict[str, str] = {}
    for index in range(num_batches(len(unique), batch_size)):
        span = batch_slice(index, batch_size, len(unique))
        table.update(zip(unique[span], done[index]))
    return table


def missing_message(missing: Sequence[int], total: int,
                    shard_files: Sequence[tuple[int, int, Path]]) -> str:
    """Which batches are missing and which ``--shard`` runs would produce them."""
    counts = sorted({n for _, n, _ in shard_files})
    lines = [f"{len(missing)} of {total} batches are not translated yet "
             f"(first missing: {', '.join(map(str, missing[:10]))})."]
    for n in counts:
        shards = sorted({b % n for b in missing})
        if n == 1:
            lines.append("Rerun without --shard to finish them.")
        else:
            lines.append(f"With {n} shards: rerun --shard {', '.join(f'{s}/{n}' for s in shards)}.")
    if not counts:
        lines.append("No shard has run with these settings yet.")
    return " ".join(lines)


def write_layer1(out_path: str | os.PathLike, recipes: Iterable[Recipe], lang: str,
                 table: dict[str, str], source: str | os.PathLike) -> int:
    """Write ``layer1_<lang>.json`` atomically, streaming the recipes a second time.

    Each entry holds ``id``, ``url``, ``partition``, ``title_<lang>``, ``ingredients_<lang>`` and
    ``instructions_<lang>`` (lists of ``{"text": ...}``), in source order; every field has as many
    texts as the source, empty texts stay empty.

    Returns:
        The number of recipes written.

    Raises:
        MissingTranslationError: naming ``source`` and the recipe when a text has no translation
            (the source changed after the sentences were collected).
    """
    def tr(text: str, rid: str) -> str:
        if is_empty(text):
            return ""
        try:
            return table[text]
        except KeyError:
            raise MissingTranslationError(f"{source}: recipe {rid!r}: text {text[:60]!r} has no translation; "
                           f"did the file change during the run?") from None

    count = 0
    with atomic_write(out_path, "w", encoding="utf-8") as handle:
        handle.write("[")
        for recipe in recipes:
            entry = {
                "id": recipe.id, "url": recipe.url, "partition": recipe.partition,
                f"title_{lang}": tr(recipe.title, recipe.id),
                f"ingredients_{lang}": [{"text": tr(t, recipe.id)} for t in recipe.ingredients],
                f"instructions_{lang}": [{"text": tr(t, recipe.id)} for t in recipe.instructions],
            }
            handle.write(",\n" if count else "\n")
            handle.write(json.dumps(entry, ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    return count
