"""The LMDB record format written by ``create_lmdb.py`` and read by the dataset (docs/data.md).

A record is never a pickle, so reading one can never execute code. Layout of a value::

    b"XMRS" | uint32 little-endian header length | UTF-8 JSON header | np.save(ids) | np.save(parts)

The header holds ``{"format": 1, "langs": [codes], "class": int, "images": [image ids]}``;
``ids`` is int32 ``(len(langs), max_len)`` and ``parts`` is int8 of the same shape, with part codes
``-1`` CLS, ``1`` title, ``2`` ingredients, ``3`` instructions, ``0`` padding. ``class`` is the
classes1M class + 1 (the loader subtracts 1; docs/data.md#recipe1m-on-disk). Keys are recipe ids in UTF-8.

:class:`RecordReader` is the one reader of records (datasets, figures, GAN_test.py, benchmarks):
read-only, ``lock=False``, ``readahead=False``; :func:`part_text` decodes one part of a record.
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


def _env_key(path: Path) -> tuple:
    try:
        stat = os.stat(Path(path) / "data.mdb")
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return (os.path.realpath(path),)  # let open_lmdb_readonly report what is wrong


def shared_env(path: Path):
    """This process's read-only environment for the LMDB at ``path`` (opened on first request)."""
    key = _env_key(path)
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = open_lmdb_readonly(path)
    return env


class RecordReader:
    """The records of one LMDB partition by recipe id (read-only, ``lock=False``, ``readahead=False``).

    The environment is opened on the first read, never in ``__init__`` and never pickled, so a
    dataset holding a reader pickles to DataLoader workers, each opening its own.

    Args:
        path: the ``<partition>_lmdb`` folder (:func:`lmdb_dir`).
        shared: read through this process's :func:`shared_env` (datasets, figures); False opens a
            private environment that :meth:`close` (or the ``with`` block) closes, unless the
            process already shares one for this LMDB (py-lmdb opens an LMDB once per process).
    """

    def __init__(self, path: str | Path, shared: bool = True) -> None:
        self.path = Path(path)
        self.shared = shared
        self._env = None
        self._private = False  # whether _env is this reader's own (closed by close())

    @property
    def opened(self) -> bool:
        """Whether this reader has opened (or taken) an environment in this process."""
        return self._env is not None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = None  # never pickled: a worker opens its own
        return state

    def get(self, recipe_id: str) -> Record | None:
        """The record of ``recipe_id``, or None when the LMDB has none.

        Raises:
            RecordError: the stored value is not a record of this format.
            FileNotFoundError: no LMDB at ``path``.
        """
        if self._env is None:
            self._private = not self.shared and _env_key(self.path) not in _ENVS
            self._env = open_lmdb_readonly(self.path) if self._private else shared_env(self.path)
        with self._env.begin(write=False) as txn:
            value = txn.get(recipe_id.encode("utf-8"))
        return None if value is None else decode_record(value)

    def close(self) -> None:
        """Close a private environment (a shared one stays open for the process)."""
        if self._env is not None and self._private:
            self._env.close()
        self._env = None

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def part_text(record: Record, tokenizer, lang: str, part: int) -> str:
    """One part (``PART_TITLE``, ``PART_INGR``, ``PART_INST``) of the ``lang`` row, decoded and stripped.

    The first row stands in when the record has no ``lang`` row.
    """
    row = record.langs.index(lang) if lang in record.langs else 0
    ids, parts = record.ids[row], record.parts[row]
    return tokenizer.decode(ids[parts == part].tolist()).strip()
