"""The LMDB record format written by ``create_lmdb.py`` and read by the dataset (SPEC sections 3, 8).

A record is never a pickle, so reading one can never execute code. Layout of a value::

    b"XMRS" | uint32 little-endian header length | UTF-8 JSON header | np.save(ids) | np.save(parts)

The header holds ``{"format": 1, "langs": [codes], "class": int, "images": [image ids]}``;
``ids`` is int32 ``(len(langs), max_len)`` and ``parts`` is int8 of the same shape, with part codes
``-1`` CLS, ``1`` title, ``2`` ingredients, ``3`` instructions, ``0`` padding. ``class`` is the
classes1M class + 1 (the loader subtracts 1; SPEC section 2). Keys are recipe ids in UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MAGIC = b"XMRS"
PART_PAD, PART_CLS, PART_TITLE, PART_INGR, PART_INST = 0, -1, 1, 2, 3
PART_CODES = {"title": PART_TITLE, "ingr": PART_INGR, "inst": PART_INST}
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class Record:
    """One recipe as stored in the LMDB."""

    langs: list[str]  # language codes, one per row of ``ids``
    ids: np.ndarray  # int32 (L, max_len)
    parts: np.ndarray  # int8 (L, max_len)
    cls: int  # classes1M class + 1
    images: list[str]  # image ids (at most maxImgs)


class RecordError(ValueError):
    """A value that is not a record of this format."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_record(record: Record) -> bytes:
    """Serialise ``record``; equal records give byte-identical values."""
    ids = np.asarray(record.ids, dtype=np.int32)
    parts = np.asarray(record.parts, dtype=np.int8)
    if ids.ndim != 2 or ids.shape != parts.shape or ids.shape[0] != len(record.langs):
        raise RecordError(f"ids {ids.shape} / parts {parts.shape} do not match {len(record.langs)} languages")
    header = json.dumps(
        {"format": FORMAT_VERSION, "langs": list(record.langs), "class": int(record.cls),
         "images": list(record.images)},
        sort_keys=True, ensure_ascii=True, separators=(",", ":"),
    ).encode("utf-8")
    return MAGIC + struct.pack("<I", len(header)) + header + _npy_bytes(ids) + _npy_bytes(parts)


def decode_record(value: bytes) -> Record:
    """Parse a value written by :func:`encode_record` (no pickle is ever loaded)."""
    value = bytes(value)
    if value[:4] != MAGIC:
        raise RecordError("not an xmrs LMDB record (bad magic); rebuild the LMDB with create_lmdb.py")
    (hlen,) = struct.unpack("<I", value[4:8])
    header = json.loads(value[8:8 + hlen].decode("utf-8"))
    if header.get("format") != FORMAT_VERSION:
        raise RecordError(f"record format {header.get('format')} is not {FORMAT_VERSION}; rebuild the LMDB")
    stream = io.BytesIO(value[8 + hlen:])
    ids = np.load(stream, allow_pickle=False)
    parts = np.load(stream, allow_pickle=False)
    return Record(langs=header["langs"], ids=ids, parts=parts, cls=header["class"], images=header["images"])


def lmdb_dir(data_path: str | Path, partition: str) -> Path:
    """``<data_path>/<partition>_lmdb``."""
    return Path(data_path) / f"{partition}_lmdb"


def keys_file(data_path: str | Path, partition: str) -> Path:
    """``<data_path>/<partition>_keys.pkl``."""
    return Path(data_path) / f"{partition}_keys.pkl"


def open_lmdb_readonly(path: str | Path):
    """Open an LMDB environment read-only, without locks or readahead (safe in many workers)."""
    import lmdb

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"LMDB not found: {path} (build it with create_lmdb.py)")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                     max_readers=512, subdir=True)


# One read-only environment per LMDB and process: py-lmdb refuses to open the same files twice in
# a process, and several datasets may read one partition. Keyed by the data file's identity, so
# an LMDB rebuilt (swapped in) at the same path is opened afresh. A worker forked after the parent
# opened an LMDB inherits this dict and reuses that environment: with lock=False there are no
# locks or reader slots tied to the parent, only the read-only memory map, which fork shares.
_ENVS: dict[tuple, object] = {}


def shared_env(path: Path):
    """This process's read-only environment for the LMDB at ``path`` (opened on first request)."""
    try:
        stat = os.stat(Path(path) / "data.mdb")
        key = (stat.st_dev, stat.st_ino)
    except OSError:
        key = (os.path.realpath(path),)  # let open_lmdb_readonly report what is wrong
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = open_lmdb_readonly(path)
    return env
