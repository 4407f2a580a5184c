"""Translate Recipe1M's ``layer1.json`` into another language: ``python translate_text.py LANG``.

``LANG`` is ``de``, ``ru``, ``fr`` (from ``layer1.json``) or ``de-en``, ``ru-en`` (back to English
from ``layer1_de.json`` / ``layer1_ru.json``); the output is ``<r1m_path>/layer1_<LANG>.json``
(docs/data.md#translations). How it translates (distinct sentences once, fixed batches, the
crash-safe cache, ``--shard``, ``torchrun``, ``--convert_fairseq``):
docs/data.md#how-translate_textpy-translates.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.fairseq_convert import FairseqConversionError, convert_fairseq_checkpoint
from data.recipe1m import Recipe, Recipe1MError, iter_layer1, layer1_path
from data.translation import (
    CorpusStats,
    MissingTranslationError,
    TranslateFn,
    TranslationCache,
    collect_unique,
    corpus_digest,
    missing_message,
    num_batches,
    parse_shard,
    shard_batches,
    translate_batches,
    translation_table,
    write_layer1,
)
from utils.cli import HelpFormatter, resolve_device, run_main

TARGETS = ("de", "ru", "fr", "de-en", "ru-en")
SOURCE_LANG = {"de": "en", "ru": "en", "fr": "en", "de-en": "de", "ru-en": "ru"}
TARGET_LANG = {"de": "de", "ru": "ru", "fr": "fr", "de-en": "en", "ru-en": "en"}
DEFAULT_MODELS = {
    "de": "facebook/wmt19-en-de",
    "ru": "facebook/wmt19-en-ru",
    "fr": "Helsinki-NLP/opus-mt-en-fr",
    "de-en": "facebook/wmt19-de-en",
    "ru-en": "facebook/wmt19-ru-en",
}


def get_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        usage="%(prog)s {de,ru,fr,de-en,ru-en} [options]",
        description="Translate Recipe1M's layer1.json into layer1_<LANG>.json (de, ru, fr), or back to English\n"
                    "(de-en, ru-en); how: docs/data.md#how-translate_textpy-translates.",
        formatter_class=HelpFormatter)
    parser.add_argument("lang", choices=TARGETS,
                        help="target: de, ru, fr (from layer1.json) or de-en, ru-en (from layer1_de.json / "
                             "layer1_ru.json)")
    parser.add_argument("--r1m_path", default="data/Recipe1M", help="folder holding the Recipe1M layer1 files")
    parser.add_argument("--out", default=None, help="output file; None: <r1m_path>/layer1_<LANG>.json")
    parser.add_argument("--model", default=None,
                        help="Hugging Face name or local folder of a seq2seq translation model, loaded with "
                             "AutoTokenizer / AutoModelForSeq2SeqLM; None: the model for LANG ("
                             + ", ".join(f"{k}: {v}" for k, v in DEFAULT_MODELS.items()) + ")")
    parser.add_argument("--convert_fairseq", default=None, metavar="CKPT",
                        help="first convert this fairseq checkpoint (e.g. wmt19.en-de.joined-dict.ensemble/"
                             "model1.pt, with dict.<src>.txt, dict.<tgt>.txt and bpecodes beside it) into the new "
                             "folder --model, then translate with it")
    parser.add_argument("--convert_only", action="store_true",
                        help="with --convert_fairseq: stop after the conversion")
    parser.add_argument("--beam", type=int, default=5, help="beam size")
    parser.add_argument("--max_length", type=int, default=200,
                        help="maximum translation length in target tokens (generate's max_length)")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="sentences per batch (unique sentences, sorted by length); part of the cache "
                             "key, since beam search depends on a batch's padding")
    parser.add_argument("--no_cuda", action="store_true", help="run on CPU even when a GPU is available")
    parser.add_argument("--fp16", action="store_true", help="half precision on GPU (ignored on CPU)")
    parser.add_argument("--limit", type=int, default=None, help="translate only the first N recipes (trials)")
    parser.add_argument("--shard", default=None,
                        help="i/n: translate batches i, i+n, ... only; None: torchrun's RANK/WORLD_SIZE, "
                             "else 0/1")
    parser.add_argument("--assemble", action="store_true",
                        help="translate nothing: write the output from the cache, or list the missing shards")
    parser.add_argument("--cache_dir", default=None,
                        help="cache root; None: <r1m_path>/.translate_cache (safe to delete after the run)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="under torchrun: seconds rank 0 waits for the other ranks' batches before "
                             "giving up on assembling")
    return parser


def model_identity(name: str) -> str:
    """What keys the cache for ``--model``: ``hub:<name>``, or a content hash of a local folder.

    A local folder is identified by the SHA-256 of its files (names and bytes), so moving it
    keeps the cache and retraining into it invalidates the cache.

    Raises:
        SystemExit: ``name`` looks like a path (absolute, ``./``, ``~``) but is no folder.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        hasher = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # .cache/, .git/ and similar are not part of the model
            hasher.update(f"{rel}\0{file.stat().st_size}\0".encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                    hasher.update(chunk)
        return f"local:{hasher.hexdigest()}"
    if path.is_absolute() or name.startswith(("./", "../", "~", ".\\")) or path.exists():
        raise SystemExit(f"--model {name}: no such model folder (give a local folder holding config.json "
                         f"and the tokenizer files, or a Hugging Face model name)")
    return f"hub:{name}"


HUB_TIMEOUT = 3.0  # seconds to open a connection to the hub before calling it unreachable


def offline_hint(name: str) -> str:
    """The advice for a hub model that cannot be downloaded here."""
    return (f"Without network access, download the model on a connected machine (for instance "
            f"`hf download {name} --local-dir DIR`) and pass --model DIR, a local path.")


def _hub_cached(name: str) -> bool:
    """Whether the hub model ``name`` has its ``config.json`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def hub_offline(name: str) -> str:
    """Why the hub cannot be asked for ``--model name`` now (``""``: it can).

    ``HF_HUB_OFFLINE`` set, or no connection to the hub's host within ``HUB_TIMEOUT`` seconds: the
    libraries would otherwise retry for about a minute before failing. Behind a proxy (``HTTPS_PROXY``
    or ``ALL_PROXY`` set) a direct connection says nothing, so the hub is taken as reachable.
    """
    import socket
    from urllib.parse import urlparse

    import huggingface_hub

    if huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES",
                                                                                            "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT).close()
    except OSError as err:
        return f"the hub {endpoint.hostname} is unreachable ({err or type(err).__name__})"
    return ""


class HFTranslator:
    """A seq2seq model of the Hub or a local folder as a ``list[str] -> list[str]`` function.

    Args:
        name: ``--model``.
        device: where to run.
        fp16: half precision (GPU only).
        beam: beam size.
        max_length: maximum target length (``generate``'s ``max_length``).
        langs: ``(source, target)``; a model that states its languages (FSMT's ``config.langs``)
            must translate this pair.
    """

    def __init__(self, name: str, device: Any, fp16: bool, beam: int, max_length: int,
                 langs: tuple[str, str] | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch = torch
        local = Path(name).expanduser().is_dir()
        if local and not (Path(name).expanduser() / "config.json").is_file():
            raise SystemExit(f"--model {name}: not a model folder (no config.json); give a local path "
                             f"written by save_pretrained, or a Hugging Face model name")
        offline = "" if local else hub_offline(name)
        if offline and not _hub_cached(name):  # fail at once, not after a minute of retries
            raise SystemExit(f"could not load --model {name!r}: {offline}, and it is not in the local cache.\n"
                             f"{offline_hint(name)}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=bool(offline))
            model, info = AutoModelForSeq2SeqLM.from_pretrained(name, output_loading_info=True,
                                                                local_files_only=bool(offline))
        except Exception as err:  # any loading failure gets the same advice
            hints = [f"could not load --model {name!r}: {type(err).__name__}: {err}".strip()]
            if "sentencepiece" in str(err).lower() and importlib.util.find_spec("sentencepiece") is None:
                hints.append("Marian (Helsinki-NLP/opus-mt-*) tokenizers need `pip install sentencepiece`.")
            if not local:
                hints.append(offline_hint(name))
            raise SystemExit("\n".join(hints)) from None
        # Weights absent from the files are left random: the model would translate garbage for hours.
        # Sinusoidal position tables are computed, not learnt, so they may be absent.
        missing = sorted(k for k in info.get("missing_keys", ()) if "embed_positions" not in k)
        if missing:
            raise SystemExit(f"--model {name}: the checkpoint lacks {len(missing)} weights "
                             f"({', '.join(missing[:5])}); they would stay random")
        model_langs = getattr(model.config, "langs", None)
        if langs and model_langs and list(model_langs) != list(langs):
            raise SystemExit(f"--model {name} translates {'-'.join(model_langs)}, not {'-'.join(langs)}")
        self.model = model.half() if fp16 else model
        self.model.to(device).eval()
        self.device = device
        self.beam = beam
        self.max_length = max_length
        # Long Recipe1M instructions are cut to what the encoder's positions allow.
        limits = [getattr(model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        self.max_source = min(int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000)

    def __call__(self, sentences: list[str]) -> list[str]:
        enc = self.tokenizer(sentences, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_source).to(self.device)  # (B, L)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, num_beams=self.beam, max_length=self.max_length,
                                      do_sample=False, num_return_sequences=1)  # (B, T)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


def _distributed() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def convert_model(args: argparse.Namespace) -> Path:
    """``--convert_fairseq CKPT``: write the FSMT folder ``--model`` from a fairseq checkpoint."""
    if not args.model:
        raise SystemExit("--convert_fairseq needs --model DIR: the new folder for the converted model")
    if _distributed():
        raise SystemExit("--convert_fairseq under torchrun would convert once per rank; convert first with "
                         "--convert_only in one process, then launch torchrun with --model DIR")
    expected = (SOURCE_LANG[args.lang], TARGET_LANG[args.lang])
    try:
        out = convert_fairseq_checkpoint(args.convert_fairseq, args.model)
    except (FairseqConversionError, OSError) as err:
        raise SystemExit(f"--convert_fairseq: {err}") from None
    langs = tuple(json.loads((out / "config.json").read_text(encoding="utf-8"))["langs"])
    print(f"converted {args.convert_fairseq} ({'-'.join(langs)}) into {out}", flush=True)
    if langs != expected:
        raise SystemExit(f"{args.convert_fairseq} translates {'-'.join(langs)}, but {args.lang} needs "
                         f"{'-'.join(expected)}; the converted model is in {out}")
    return out


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("beam", "max_length", "batch_size"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.limit is not None and args.limit < 0:
        raise SystemExit(f"--limit must be >= 0, got {args.limit}")


def main(argv: Sequence[str] | None = None, translate_fn: TranslateFn | None = None) -> dict[str, Any]:
    """Run the translation; returns a summary (counts, batches, output path or None).

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
        translate_fn: translate with this function instead of loading ``--model`` (tests,
            benches); ``--model`` still names the cache key.
    """
    return run_main(lambda: _main(argv, translate_fn))


@dataclass
class _Run:
    """What one invocation works on, settled from the flags before the source is read."""

    args: argparse.Namespace
    source: Path  # the layer1 file translated
    out_path: Path
    model_name: str
    identity: str  # model_identity(model_name): part of the cache key
    shard: int
    num_shards: int
    dist: tuple[int, int, int] | None  # (rank, world size, local rank) under torchrun
    device: Any
    fp16: bool

    @property
    def src_lang(self) -> str:
        return SOURCE_LANG[self.args.lang]

    @property
    def rank_tag(self) -> str:
        """The prefix of this process's lines when several shards run."""
        return f"[shard {self.shard}/{self.num_shards}] " if self.num_shards > 1 else ""

    def recipes(self) -> Iterator[Recipe]:
        """The source's recipes, the first ``--limit`` only (read twice: collecting, then writing)."""
        return itertools.islice(iter_layer1(self.source, self.src_lang), self.args.limit)


def _settle(args: argparse.Namespace) -> _Run:
    """Source and output files, shard, device and model identity from the flags (SystemExit on a bad one)."""
    src_lang = SOURCE_LANG[args.lang]
    source = layer1_path(args.r1m_path, src_lang)
    if not source.is_file():
        hint = f" (run `python translate_text.py {src_lang}` first)" if src_lang != "en" else ""
        raise SystemExit(f"{source}: source file not found{hint}")
    out_path = Path(args.out) if args.out else layer1_path(args.r1m_path, args.lang)
    model_name = args.model or DEFAULT_MODELS[args.lang]
    dist = _distributed()
    if args.shard is not None:
        try:
            shard, num_shards = parse_shard(args.shard)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    else:
        shard, num_shards = (dist[0], dist[1]) if dist else (0, 1)
    device = resolve_device(args.no_cuda, local_rank=dist[2] if dist else None)
    fp16 = args.fp16 and device.type == "cuda"
    if args.fp16 and not fp16:
        print("warning: --fp16 needs a GPU; translating in fp32", file=sys.stderr)
    return _Run(args, source, out_path, model_name, model_identity(model_name), shard, num_shards, dist,
                device, fp16)


def _read_corpus(run: _Run) -> tuple[list[str], CorpusStats]:
    """The source's distinct sentences, sorted (``collect_unique``), and its counts; printed."""
    from tqdm import tqdm

    try:
        unique, stats = collect_unique(tqdm(run.recipes(), desc=f"{run.rank_tag}reading {run.source.name}",
                                            unit=" recipes", mininterval=2.0))
    except Recipe1MError as err:
        raise SystemExit(str(err)) from None
    print(f"{run.rank_tag}{run.source}: {stats.summary()}", flush=True)
    return unique, stats


def _open_cache(run: _Run, unique: list[str]) -> TranslationCache:
    """The cache of this corpus and these settings (everything a translation depends on is in its key)."""
    args = run.args
    settings = {"lang": args.lang, "source": run.src_lang, "model": run.identity, "beam": args.beam,
                # --assemble may run on a machine without the GPU that translated in fp16.
                "max_length": args.max_length, "precision": "fp16" if run.fp16 or (args.assemble and args.fp16)
                else "fp32",
                "batch_size": args.batch_size, "unique": len(unique), "corpus": corpus_digest(unique)}
    cache_root = Path(args.cache_dir) if args.cache_dir else Path(args.r1m_path) / ".translate_cache"
    return TranslationCache(cache_root / args.lang, settings)


def _translate_shard(run: _Run, unique: list[str], cache: TranslationCache, done: dict, total: int,
                     translate_fn: TranslateFn | None) -> int:
    """Translate this shard's batches that the cache lacks, appending each to the cache; returns their number."""
    from tqdm import tqdm

    args, lang = run.args, run.args.lang
    todo = [b for b in shard_batches(total, run.shard, run.num_shards) if b not in done]
    print(f"{run.rank_tag}{total} batches of up to {args.batch_size} sentences; {len(done)} already in "
          f"{cache.dir}; {len(todo)} to translate here", flush=True)
    if not todo:
        return 0
    fn = translate_fn or HFTranslator(run.model_name, run.device, run.fp16, args.beam, args.max_length,
                                      langs=(run.src_lang, TARGET_LANG[lang]))
    cache.prepare()
    n_sent = sum(min(args.batch_size, len(unique) - b * args.batch_size) for b in todo)
    start = time.perf_counter()
    with cache.writer(run.shard, run.num_shards) as writer, \
            tqdm(total=n_sent, desc=f"{run.rank_tag}translating to {lang}", unit=" sent") as bar:
        translate_batches(unique, args.batch_size, todo, fn, writer, bar.update)
    took = time.perf_counter() - start
    print(f"{run.rank_tag}translated {n_sent} unique sentences in {took:.1f}s "
          f"({n_sent / max(took, 1e-9):.1f} sentences/s)", flush=True)
    return len(todo)


def _wait_for_ranks(run: _Run, cache: TranslationCache, unique: list[str], done: dict, total: int) -> dict:
    """Rank 0 under torchrun: poll the cache up to ``--wait`` seconds until every batch is there."""
    deadline = time.monotonic() + run.args.wait
    while len(done) < total and time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        done = cache.load(unique, run.args.batch_size)
    return done


def _write_output(run: _Run, table: dict[str, str], stats: CorpusStats) -> None:
    """Write the output file, each source text replaced by its translation in ``table``."""
    from tqdm import tqdm

    out_path = run.out_path
    try:
        count = write_layer1(out_path, tqdm(run.recipes(), desc=f"writing {out_path.name}", unit=" recipes",
                                            mininterval=2.0), run.args.lang, table, run.source)
    except (Recipe1MError, MissingTranslationError) as err:
        raise SystemExit(str(err)) from None
    print(f"{run.rank_tag}wrote {out_path}: {count} recipes ({stats.sentences} sentences, {stats.unique} "
          f"unique translations)", flush=True)


def _main(argv: Sequence[str] | None, translate_fn: TranslateFn | None) -> dict[str, Any]:
    args = get_parser().parse_args(argv)
    _check_args(args)
    if args.convert_fairseq:
        converted = convert_model(args)
        if args.convert_only:
            return {"converted": str(converted), "output": None}
    elif args.convert_only:
        raise SystemExit("--convert_only needs --convert_fairseq CKPT")
    run = _settle(args)
    unique, stats = _read_corpus(run)
    cache = _open_cache(run, unique)
    total = num_batches(len(unique), args.batch_size)
    done = cache.load(unique, args.batch_size)
    result: dict[str, Any] = {"stats": stats.to_dict(), "batches": total, "cached_batches": len(done),
                              "translated_batches": 0, "cache_dir": str(cache.dir), "output": None}
    if not args.assemble:
        result["translated_batches"] = _translate_shard(run, unique, cache, done, total, translate_fn)
        done = cache.load(unique, args.batch_size)

    torchrun_shard = run.dist is not None and args.shard is None  # ranks meet in the cache
    if torchrun_shard and not args.assemble:
        if run.dist[0] != 0:
            print(f"{run.rank_tag}done; rank 0 writes {run.out_path}", flush=True)
            return result
        done = _wait_for_ranks(run, cache, unique, done, total)
    missing = [b for b in range(total) if b not in done]
    if missing:
        message = f"{run.rank_tag}{missing_message(missing, total, cache.shard_files())}"
        if args.assemble or torchrun_shard:
            raise SystemExit(f"{message} Then run `translate_text.py {args.lang} --assemble` with the same "
                             f"--model, --beam, --max_length, --batch_size, --fp16 and --limit.")
        print(f"{message} The shard that finishes last writes {run.out_path} (or run --assemble).", flush=True)
        return result
    table = translation_table(unique, args.batch_size, done)
    del done, unique  # the table holds what assembly needs
    _write_output(run, table, stats)
    result["output"] = str(run.out_path)
    return result


if __name__ == "__main__":
    main()
