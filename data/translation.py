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
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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


# --------------------------------------------------------------------------- fairseq -> FSMT

class FairseqConversionError(ValueError):
    """A fairseq checkpoint folder that cannot become an FSMT model; the message names the file."""


# What fairseq stores besides weights: version counters, and its sinusoidal position module's
# buffer (an empty ``_float_tensor``; before mid-2019 the table itself, ``weights``). None carries
# information: FSMT computes the same sinusoids.
_FAIRSEQ_IGNORED = re.compile(r"^(encoder|decoder)\.(version|embed_positions\.(_float_tensor|weights))$")


class _Inert:
    """Stand-in for a class a fairseq checkpoint refers to outside its weights (meters, numpy scalars).

    Unpickling builds one of these instead of importing anything: the arguments and state are kept
    as plain values, no code of the original class runs.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


@contextmanager
def _safe_globals(allowed: list[Any]) -> Iterator[None]:
    """``torch.serialization.safe_globals`` (torch >= 2.5), or the global allow-list of torch 2.4."""
    import torch

    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(allowed):
            yield
    else:
        torch.serialization.add_safe_globals(allowed)
        yield


def _unpickler_reason(err: Exception) -> str:
    """The one line of torch's weights-only error that says what was refused (never its advice to
    retry with ``weights_only=False``, which would run the file's code)."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in tail.splitlines() if line.strip()
             and not re.search(r"weights.only|file an issue|documentation of torch\.load", line, re.I)]
    return lines[0] if lines else type(err).__name__


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fairseq ``model*.pt`` with ``torch.load(weights_only=True)``, never running its code.

    The checkpoint's ``args`` is an ``argparse.Namespace`` (allowed explicitly); anything else it
    refers to outside ``torch`` (training meters, numpy scalars of old trainers) becomes an
    inert :class:`_Inert` object. Both the legacy and the zip format of ``torch.save`` load.

    Raises:
        FairseqConversionError: unreadable file, or a refused ``torch`` global.
    """
    import argparse
    import pickle

    import torch

    allowed: list[Any] = [argparse.Namespace]
    for _ in range(100):  # one more inert class per unknown global the file names
        try:
            with _safe_globals(allowed), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's note on a plain pickle's protocol
                state = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as err:
            match = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
            name = match[1] if match else None
            if name is None or name.startswith("torch.") or name == "torch":
                raise FairseqConversionError(f"{path}: cannot read the checkpoint safely (it needs more than "
                                             f"torch.load(weights_only=True) allows: {_unpickler_reason(err)}); "
                                             "a fairseq model*.pt is expected") from None
            module, _, qualname = name.rpartition(".")
            allowed.append(type(qualname, (_Inert,), {"__module__": module, "__qualname__": qualname}))
        except (OSError, RuntimeError, EOFError) as err:
            raise FairseqConversionError(f"{path}: not a readable torch checkpoint: {err}") from None
    else:
        raise FairseqConversionError(f"{path}: too many unknown classes in the checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise FairseqConversionError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def read_fairseq_dict(path: str | os.PathLike) -> dict[str, int]:
    """A fairseq ``dict.<lang>.txt`` as ``{token: index}``, as ``fairseq.data.Dictionary.load`` numbers it.

    Indices 0-3 are ``<s> <pad> </s> <unk>``; each line ``<token> <count> [#fairseq:overwrite]``
    adds the next index (an overwriting line takes a new index, like fairseq's ``add_symbol``).
    """
    indices = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    size = len(indices)  # fairseq's symbol count: an overwritten token keeps its old row too
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            token, _, field = line.rstrip().rpartition(" ")
            overwrite = field == "#fairseq:overwrite"
            if overwrite:
                token, _, field = token.rpartition(" ")
            if not token or not re.fullmatch(r"-?\d+", field):
                raise FairseqConversionError(f"{path}: line {number}: expected '<token> <count>', got {line!r}")
            if token in indices and not overwrite:
                raise FairseqConversionError(f"{path}: line {number}: duplicate token {token!r}")
            indices[token] = size
            size += 1
    return indices


def fsmt_vocab(fairseq_indices: dict[str, int]) -> dict[str, int]:
    """fairseq's BPE vocabulary in FSMT's spelling: ``ab@@`` (word goes on) -> ``ab``, ``ab`` -> ``ab</w>``."""
    specials = ("<s>", "<pad>", "</s>", "<unk>")
    vocab = {}
    for token, index in fairseq_indices.items():
        if token in specials:
            vocab[token] = index
        elif token.endswith("@@"):
            vocab[token[:-2]] = index
        else:
            vocab[token + "</w>"] = index
    return vocab


def _upgrade_fairseq_state(model_state: dict[str, Any]) -> dict[str, Any]:
    """Rename old fairseq weights to the current names FSMT mirrors (what fairseq's upgrades do).

    ``in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked) are split; ``layer_norms.<i>`` get
    their names; an unshared ``decoder.embed_out`` becomes ``decoder.output_projection.weight``.
    """
    state = dict(model_state)
    for key in [k for k in state if k.endswith(".in_proj_weight") or k.endswith(".in_proj_bias")]:
        prefix, kind = key.rsplit(".in_proj_", 1)
        qkv = state.pop(key)
        dim = qkv.shape[0] // 3
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[f"{prefix}.{name}.{kind}"] = qkv[i * dim:(i + 1) * dim]
    names = {"encoder": ("self_attn_layer_norm", "final_layer_norm"),
             "decoder": ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")}
    for key in list(state):
        match = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.layer_norms\.(\d+)\.(weight|bias)", key)
        if match and int(match[3]) < len(names[match[1]]):
            state[f"{match[1]}.layers.{match[2]}.{names[match[1]][int(match[3])]}.{match[4]}"] = state.pop(key)
    if "decoder.embed_out" in state and "decoder.output_projection.weight" not in state:
        state["decoder.output_projection.weight"] = state.pop("decoder.embed_out")
    return state


def _fairseq_model_args(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model's hyper-parameters: ``args`` (old fairseq) or ``cfg["model"]`` plus the task's languages."""
    args = state.get("args")
    if args is None and isinstance(state.get("cfg"), dict):
        cfg = state["cfg"]
        model = cfg.get("model")
        args = {**(vars(cfg["task"]) if hasattr(cfg.get("task"), "__dict__") else cfg.get("task") or {}),
                **(vars(model) if hasattr(model, "__dict__") else model or {})}
    elif args is not None and hasattr(args, "__dict__"):
        args = vars(args)
    if not isinstance(args, dict):
        raise FairseqConversionError(f"{path}: no model settings ('args' or 'cfg') in the checkpoint")
    return args


def convert_fairseq_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                               length_penalty: float = 1.0, num_beams: int = 5, early_stopping: bool = True) -> Path:
    """Convert a fairseq transformer translation checkpoint into an FSMT model folder.

    Reads ``checkpoint`` (e.g. ``wmt19.en-de.joined-dict.ensemble/model1.pt``) and, beside it,
    ``dict.<src>.txt``, ``dict.<tgt>.txt`` and ``bpecodes`` (older releases: ``code``). Writes
    ``out_dir`` (must not exist; written aside, then renamed into place) loadable with
    ``AutoTokenizer`` / ``AutoModelForSeq2SeqLM``: weights, ``config.json``, the generation
    settings, ``vocab-src.json``, ``vocab-tgt.json``, ``merges.txt``, ``tokenizer_config.json``.
    This is what transformers' old ``convert_fsmt_original_pytorch_checkpoint_to_pytorch.py`` did,
    without fairseq: the weights are read from the file (old names upgraded like fairseq does),
    the settings from its ``args``. Only what FSMT can represent converts: post-norm layers,
    sinusoidal positions, a shared or separate output projection; anything else is refused.

    Args:
        checkpoint: the fairseq ``.pt`` file.
        out_dir: the FSMT folder to create.
        length_penalty: beam search's length penalty; 1.0 is fairseq's default ``--lenpen``.
        num_beams: the default beam size stored with the model.
        early_stopping: end a sentence's beam search once it has ``num_beams`` finished
            hypotheses, as fairseq's generator does (Hugging Face's FSMT ports store False).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FairseqConversionError: naming the file and what does not fit.
    """
    import shutil
    import tempfile

    import torch
    from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists():
        raise FairseqConversionError(f"{out_dir}: already exists; give a new folder for the converted model")
    folder = checkpoint.parent
    state = load_fairseq_checkpoint(checkpoint)
    args = _fairseq_model_args(state, checkpoint)
    src, tgt = args.get("source_lang"), args.get("target_lang")
    if not src or not tgt:
        raise FairseqConversionError(f"{checkpoint}: the checkpoint names no source_lang / target_lang")
    unsupported = {"encoder_normalize_before": "pre-norm encoder layers",
                   "decoder_normalize_before": "pre-norm decoder layers",
                   "encoder_learned_pos": "learned encoder positions", "decoder_learned_pos": "learned decoder positions",
                   "no_token_positional_embeddings": "no positional embeddings",
                   "layernorm_embedding": "a layer norm on the embeddings", "cross_self_attention": "cross+self attention",
                   "adaptive_softmax_cutoff": "an adaptive softmax", "adaptive_input": "adaptive inputs"}
    found = [f"{flag}={args[flag]!r} ({what})" for flag, what in unsupported.items() if args.get(flag)]
    activation = args.get("activation_fn", "relu")
    if activation not in ("relu", "gelu"):
        found.append(f"activation_fn={activation!r}")
    if found:
        raise FairseqConversionError(f"{checkpoint}: FSMT cannot represent {', '.join(found)}")

    weights = _upgrade_fairseq_state(state["model"])
    not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise FairseqConversionError(f"{checkpoint}: 'model' holds non-tensors: {not_tensors[:5]}")
    weights = {k: v for k, v in weights.items() if not _FAIRSEQ_IGNORED.match(k)}
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if key not in weights:
            raise FairseqConversionError(f"{checkpoint}: no {key} among the weights")
    if "decoder.output_projection.weight" not in weights:  # shared input/output embedding
        weights["decoder.output_projection.weight"] = weights["decoder.embed_tokens.weight"]

    def layers(side: str) -> int:
        return len({int(m[1]) for k in weights if (m := re.match(rf"{side}\.layers\.(\d+)\.", k))})

    def heads(side: str) -> int:
        value = args.get(f"{side}_attention_heads")
        if not isinstance(value, int) or value < 1:
            raise FairseqConversionError(f"{checkpoint}: no {side}_attention_heads in the checkpoint's settings")
        return value

    src_rows, d_model = weights["encoder.embed_tokens.weight"].shape
    tgt_rows = weights["decoder.embed_tokens.weight"].shape[0]
    dicts = {}
    for side, lang, rows in (("src", src, src_rows), ("tgt", tgt, tgt_rows)):
        path = folder / f"dict.{lang}.txt"
        if not path.is_file():
            raise FairseqConversionError(f"{path}: missing (the {side} dictionary of {checkpoint})")
        dicts[side] = read_fairseq_dict(path)
        size = max(dicts[side].values()) + 1
        if size > rows:
            raise FairseqConversionError(f"{path}: {size} tokens, but the model has {rows} embeddings")
    bpe = next((folder / n for n in ("bpecodes", "code") if (folder / n).is_file()), None)
    if bpe is None:
        raise FairseqConversionError(f"{folder}: no bpecodes (or code) file beside {checkpoint.name}")
    tie = bool(args.get("share_all_embeddings"))
    if tie and not (torch.equal(weights["encoder.embed_tokens.weight"], weights["decoder.embed_tokens.weight"])
                    and torch.equal(weights["decoder.output_projection.weight"],
                                    weights["decoder.embed_tokens.weight"])):
        raise FairseqConversionError(f"{checkpoint}: share_all_embeddings is set but the embeddings differ")
    if layers("encoder") == 0 or layers("decoder") == 0:
        raise FairseqConversionError(f"{checkpoint}: no encoder or decoder layers among the weights")
    config = FSMTConfig(
        langs=[src, tgt], src_vocab_size=src_rows, tgt_vocab_size=tgt_rows, d_model=d_model,
        encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
        encoder_attention_heads=heads("encoder"), decoder_attention_heads=heads("decoder"),
        encoder_ffn_dim=weights["encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=weights["decoder.layers.0.fc1.weight"].shape[0],
        max_position_embeddings=int(args.get("max_source_positions") or 1024),
        activation_function=activation, scale_embedding=not args.get("no_scale_embedding", False),
        dropout=float(args.get("dropout", 0.1)), attention_dropout=float(args.get("attention_dropout", 0.0)),
        activation_dropout=float(args.get("activation_dropout", args.get("relu_dropout", 0.0)) or 0.0),
        tie_word_embeddings=tie, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=2, num_beams=num_beams,
        length_penalty=length_penalty, early_stopping=early_stopping)
    model = FSMTForConditionalGeneration(config).eval()
    expected = {k[len("model."):] for k in model.state_dict() if ".embed_positions." not in k}
    extra, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
    if extra or missing:
        raise FairseqConversionError(f"{checkpoint}: weights FSMT has no place for: {extra[:8]}; "
                                     f"FSMT weights the checkpoint lacks: {missing[:8]}")
    shapes = model.state_dict()
    wrong = [k for k, v in weights.items() if tuple(v.shape) != tuple(shapes[f"model.{k}"].shape)]
    if wrong:
        raise FairseqConversionError(f"{checkpoint}: unexpected shapes for {wrong[:8]} (inconsistent settings)")
    with torch.no_grad():
        model.model.load_state_dict(weights, strict=False)  # positions: FSMT's own sinusoids

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {"src_vocab_file": work / "vocab-src.json", "tgt_vocab_file": work / "vocab-tgt.json",
                 "merges_file": work / "merges.txt"}
        vocabs = {side: fsmt_vocab(d) for side, d in dicts.items()}
        for side in ("src", "tgt"):
            files[f"{side}_vocab_file"].write_text(json.dumps(vocabs[side], ensure_ascii=False, indent=1),
                                                   encoding="utf-8")
        # fastBPE lines are "a b count", subword-nmt's "a b" after a "#version" header: keep "a b".
        merges = [" ".join(line.split()[:2]) for line in bpe.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#version")]
        files["merges_file"].write_text("".join(m + "\n" for m in merges), encoding="utf-8")
        lower = not any(ch.isupper() for token in vocabs["src"] for ch in token)
        tokenizer = FSMTTokenizer(langs=[src, tgt], do_lower_case=lower, model_max_length=1024,
                                  **{k: str(v) for k, v in files.items()})
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir
