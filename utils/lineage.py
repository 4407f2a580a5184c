"""Lineage: what each stage's files were made from, as short fingerprints a person can read.

Each stage reads what the one before wrote (LMDB -> train.py checkpoint -> test.py's embedding
files and exported image encoder -> GAN_train.py's G and D -> GAN_test.py, search.py). Every such
file records a ``lineage`` entry of plain values (docs/run_folders.md, docs/data.md):

* ``manifest.json`` (create_lmdb.py): :func:`lmdb_lineage`: ``fingerprint`` over what gives a token
  id its meaning, ``vocab_sha256`` (of ``tokenizer/vocab.txt``), ``vocab_size``, ``special_ids``,
  ``max_len``; for a person also ``tokenizer`` (the name given) and ``languages``.
* a train.py checkpoint: :func:`checkpoint_lineage`: ``fingerprint`` of its weights
  (:func:`weights_fingerprint`), ``lmdb`` (the manifest's lineage), ``textinputs``.
* test.py's embedding files and exported image encoder: :func:`outputs_lineage`: the checkpoint's
  fingerprint and name, the LMDB's fingerprint (embedding files: also partition and language, and
  a ``fingerprint`` of these fields).
* GAN_train.py's G, D and ``opts.json``: :func:`gan_lineage`: the encoder's checkpoint fingerprint,
  the LMDB's, the embedding files' fingerprints.

Each stage checks, before any work and before writing anything, that its inputs belong together
(:func:`check_lmdb`, :func:`require_same`); a mismatch is a :class:`LineageError` of one line naming
both files, what differs and the fix. A file written before lineage was recorded still loads, with
one warning line (:func:`warn_unrecorded`).

A fingerprint is the first 12 hex digits of the SHA-256 of the canonical JSON of its fields
(:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.errors import InputError

KEY = "lineage"  # the entry's name in manifest.json, checkpoints, embedding files, opts.json
FINGERPRINT_LEN = 12
LMDB_FIELDS = ("vocab_sha256", "vocab_size", "special_ids", "max_len")  # what a token id means
EMBEDDING_FIELDS = ("checkpoint", "lmdb", "partition", "language")

_warned: set[str] = set()  # files already warned about in this process (one line each)


class LineageError(InputError):
    """Files of two stages that do not belong together (one line: both files, what differs, the fix)."""


def fingerprint(fields: Mapping[str, Any]) -> str:
    """The first 12 hex digits of the SHA-256 of ``fields`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:FINGERPRINT_LEN]


def file_sha256(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def weights_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """A fingerprint of a state dict's tensors: names, dtypes, shapes and bytes (row-major), in name order.

    The same weights give the same fingerprint whatever their device or memory format.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:FINGERPRINT_LEN]


# --------------------------------------------------------------------------- what each stage records


def lmdb_lineage(vocab_txt: str | Path, vocab_size: int | None, special_ids: Mapping[str, int], max_len: int, *,
                 tokenizer: str, languages) -> dict:
    """The ``lineage`` of an LMDB folder's ``manifest.json``.

    Args:
        vocab_txt: the folder's ``tokenizer/vocab.txt`` (one token per line, by id).
        vocab_size, special_ids, max_len: the manifest's (``vocab_size`` None: the lines of ``vocab_txt``).
        tokenizer, languages: recorded for a person (not in the fingerprint: any LMDB whose token ids
            mean the same serves a checkpoint, whichever languages it holds).
    """
    size = vocab_size if vocab_size is not None else _count_lines(vocab_txt)
    fields = {"vocab_sha256": file_sha256(vocab_txt), "vocab_size": int(size),
              "special_ids": {k: int(v) for k, v in sorted(special_ids.items())}, "max_len": int(max_len)}
    return {"fingerprint": fingerprint(fields), **fields, "tokenizer": str(tokenizer), "languages": list(languages)}


def checkpoint_lineage(weights: Mapping[str, Any], lmdb: dict | None, textinputs: str) -> dict:
    """The ``lineage`` of a train.py checkpoint: its weights' fingerprint, its LMDB's lineage, ``textinputs``."""
    return {"fingerprint": weights_fingerprint(weights), "lmdb": lmdb, "textinputs": str(textinputs)}


def checkpoint_fingerprint(ckpt: Mapping[str, Any]) -> str:
    """A train.py checkpoint's fingerprint: the recorded one, else computed from its weights (older files)."""
    recorded = (ckpt.get(KEY) or {}).get("fingerprint")
    return recorded or weights_fingerprint(ckpt["model"])


def lmdb_of(lineage: Mapping[str, Any] | None) -> dict | None:
    """The LMDB lineage a checkpoint's lineage records (None when it records none)."""
    lmdb = (lineage or {}).get("lmdb")
    return lmdb if isinstance(lmdb, dict) and lmdb.get("fingerprint") else None


def outputs_lineage(checkpoint: str, ckpt_name: str, lmdb: Mapping[str, Any] | None, partition: str | None = None,
                    language: str | None = None) -> dict:
    """The ``lineage`` of test.py's outputs of a checkpoint.

    Args:
        checkpoint: the checkpoint's fingerprint (:func:`checkpoint_fingerprint`); ckpt_name: its name.
        lmdb: the LMDB lineage the checkpoint records (:func:`lmdb_of`).
        partition, language: for an embedding file; None for the exported image encoder.

    Returns:
        ``checkpoint``, ``checkpoint_name``, ``lmdb`` (the LMDB's fingerprint); an embedding file adds
        ``partition``, ``language`` and a ``fingerprint`` of ``checkpoint, lmdb, partition, language``.
    """
    out = {"checkpoint": checkpoint, "checkpoint_name": ckpt_name, "lmdb": lmdb["fingerprint"] if lmdb else None}
    if partition is None:
        return out
    out.update(partition=partition, language=language)
    return {"fingerprint": fingerprint({k: out[k] for k in EMBEDDING_FIELDS}), **out}


def gan_lineage(encoder: Mapping[str, Any] | None, embeddings: Mapping[str, Mapping[str, Any] | None]) -> dict:
    """The ``lineage`` of GAN_train.py's G, D and ``opts.json``: the encoder's and the embedding files'."""
    encoder = encoder or {}
    return {"encoder": encoder.get("checkpoint"), "checkpoint_name": encoder.get("checkpoint_name"),
            "lmdb": encoder.get("lmdb"),
            "embeddings": {p: (e or {}).get("fingerprint") for p, e in sorted(embeddings.items())}}


# --------------------------------------------------------------------------- checks


def warn_unrecorded(path: str | Path, against: str | Path) -> None:
    """One warning line (once per file and process): ``path`` records no lineage, so it is not checked."""
    key = str(path)
    if key in _warned:
        return
    _warned.add(key)
    print(f"warning: {path} records no lineage (written before lineage was recorded): not checked against "
          f"{against}", file=sys.stderr, flush=True)


def lmdb_differences(recorded: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """``"vocab_size 400 vs 300, vocab_sha256 ab.. vs cd.."``: the LMDB fields that differ (recorded vs found)."""
    diffs = [f"{key} {_short(recorded.get(key))} vs {_short(found.get(key))}" for key in LMDB_FIELDS
             if recorded.get(key) != found.get(key)]
    return ", ".join(diffs) or f"fingerprint {recorded.get('fingerprint')} vs {found.get('fingerprint')}"


def check_lmdb(artifact: str | Path, recorded: Mapping[str, Any] | None, data_path: str | Path,
               manifest: Mapping[str, Any], *, arch: Mapping[str, Any] | None = None,
               flag: str = "--data_path") -> None:
    """Refuse an LMDB whose token ids mean something else than for the file ``artifact`` made from one.

    Args:
        artifact: the file (a checkpoint) that records ``recorded``, the lineage of its LMDB.
        data_path, manifest: the LMDB folder given and its manifest (``read_manifest``).
        arch: the checkpoint's architecture: without a recorded lineage, a vocabulary size or row
            length that differs from the manifest's is still refused.
        flag: the flag that names the LMDB (for the fix).

    Raises:
        LineageError: one line naming both files, the fields that differ and the fix.
    """
    found = manifest.get(KEY) if isinstance(manifest.get(KEY), dict) else None
    where = Path(data_path) / "manifest.json"
    if recorded is None or found is None:
        if arch is not None:  # an older checkpoint: its embedding table and positions must still fit
            diffs = [f"{key} {arch.get(key)} vs {manifest.get(key)}" for key in ("vocab_size", "max_len")
                     if None not in (arch.get(key), manifest.get(key)) and arch.get(key) != manifest.get(key)]
            if diffs:
                raise LineageError(f"{artifact} and {where} do not belong together: the model's {', '.join(diffs)} "
                                   f"of the LMDB; give the {flag} the checkpoint was trained on")
        warn_unrecorded(artifact if recorded is None else where, where if recorded is None else artifact)
        return
    if recorded.get("fingerprint") == found.get("fingerprint"):
        return
    tokenizer = recorded.get("tokenizer", "?")
    rebuild = (f"create_lmdb.py --tokenizer train --vocab_size {recorded.get('vocab_size')}" if tokenizer == "train"
               else f"create_lmdb.py --tokenizer {tokenizer}") + f" --max_len {recorded.get('max_len')}"
    raise LineageError(f"{artifact} was made from another LMDB than {where} (lineage {recorded.get('fingerprint')} "
                       f"vs {found.get('fingerprint')}: {lmdb_differences(recorded, found)}); give the {flag} it "
                       f"was made from, or rebuild the LMDB with the same tokenizer ({rebuild}, same Recipe1M "
                       f"and languages)")


def require_same(what: str, first: tuple[str | Path, Any], second: tuple[str | Path, Any], fix: str) -> None:
    """Refuse two files whose recorded ``what`` differs; warn (once) when either records none.

    Args:
        what: what each file records, as a phrase ("the image encoder of checkpoint").
        first, second: ``(file, recorded value or None)``.
        fix: the remedy, appended to the message.

    Raises:
        LineageError: ``"<first> records <what> <a>, <second> <b>: they do not belong together; <fix>"``.
    """
    (path_a, value_a), (path_b, value_b) = first, second
    if value_a is None or value_b is None:
        warn_unrecorded(path_a if value_a is None else path_b, path_b if value_a is None else path_a)
        return
    if value_a != value_b:
        raise LineageError(f"{path_a} records {what} {value_a}, {path_b} {value_b}: they do not belong together; "
                           f"{fix}")


def check_gan_inputs(encoder: tuple[str | Path, Mapping[str, Any] | None],
                     embeddings: Mapping[str, tuple[str | Path, Mapping[str, Any] | None]], *,
                     generator: tuple[str | Path, Mapping[str, Any] | None] | None = None,
                     fix_encoder: str = "", fix_embeddings: str = "") -> dict:
    """Refuse a GAN stage's inputs that do not belong together; returns the lineage a GAN run records.

    Args:
        encoder: the exported image encoder and its lineage (``None``: written before lineage).
        embeddings: partition -> (embedding file, its lineage).
        generator: a G checkpoint and its lineage (GAN_test.py, GAN_train.py ``--resume``): it must
            have been trained with this encoder, and with these train/val embedding files.
        fix_encoder, fix_embeddings: the remedies named in the messages.

    Raises:
        LineageError: an embedding file made by another checkpoint than the encoder, or a G trained
            with another encoder or other embedding files (one line naming both files).
    """
    enc_path, enc = encoder
    enc_fp = (enc or {}).get("checkpoint")
    g_path, g = generator if generator is not None else (None, None)
    if generator is not None:
        require_same("the image encoder of checkpoint", (g_path, (g or {}).get("encoder")),
                     (enc_path, enc_fp), fix_encoder)
    for partition, (path, emb) in embeddings.items():
        require_same("checkpoint", (path, (emb or {}).get("checkpoint")), (enc_path, enc_fp), fix_embeddings)
        trained_on = ((g or {}).get("embeddings") or {}).get(partition)
        if g is not None and trained_on is not None:
            require_same(f"{partition} embedding file", (g_path, trained_on), (path, (emb or {}).get("fingerprint")),
                         fix_encoder)
    return gan_lineage(enc, {p: emb for p, (_, emb) in embeddings.items()})


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, dict) else str(value)


def _count_lines(path: str | Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
