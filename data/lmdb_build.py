"""How create_lmdb.py stages its token rows on disk and swaps a finished build in atomically.

Staging: :class:`Stager` tokenises one language's recipes in batches, on a background thread,
and appends their rows to a staging file in the build folder (native int32 ids; in memory only an
offset and three part lengths per recipe); :class:`StagedRows` reads a recipe's row back when its
record is written. So memory does not grow with the texts, whatever the number of languages.

The swap: everything is built in ``<data_path>/.tmp_build_<pid>/`` and then swapped in by
:func:`swap_in`: each old output is moved aside into ``.old_<pid>/`` (``manifest.json`` first),
the new one renamed in (``manifest.json`` last), then the old ones deleted. A journal
(``.swap_journal.json``) written before the first move lets :func:`recover` roll a cut-short swap
back at the next start, so a run killed at any point never leaves a half-written data folder: it
leaves the previous output (restored at the next start if the kill hit the swap). :func:`recover`
also removes stale build folders; call it under :func:`locked` (``.create_lmdb.lock``), which
also keeps two runs off one ``--data_path``.

Test-only hook: :func:`crash_hook` exits the process abruptly, as a kill, at a point named by
``XMRS_TEST_CRASH`` (``swap:N`` after the N-th rename of the swap; create_lmdb.py calls it with
``records:N`` after writing the N-th record).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data.lmdb_format import (
    MANIFEST,
    PART_CLS,
    PART_INGR,
    PART_INST,
    PART_TITLE,
    TOKENIZER_DIR,
    keys_file,
    lmdb_dir,
)
from data.recipe1m import PARTITIONS
from data.tokenizer import ChunkEncoder
from utils.errors import InputError
from utils.io import atomic_write_json

BUILD_PREFIX, OLD_PREFIX = ".tmp_build_", ".old_"
JOURNAL, LOCK = ".swap_journal.json", ".create_lmdb.lock"
BATCH = 512  # recipes per tokenizer batch


class CreateLmdbError(InputError):
    """Bad input or options; the message names the file and the entry.

    create_lmdb.py's error; it lives here so that :func:`locked` can raise it (a script cannot be
    imported from ``data/``).
    """


def output_names() -> list[str]:
    """The outputs in ``--data_path``, ``manifest.json`` first (moved out first, in last)."""
    return ([MANIFEST] + [lmdb_dir("", p).name for p in PARTITIONS]
            + [keys_file("", p).name for p in PARTITIONS] + [TOKENIZER_DIR])


def crash_hook(stage: str, count: int) -> None:
    """Test-only: exit at once (no cleanup, as a kill) when XMRS_TEST_CRASH == '<stage>:<count>'."""
    if os.environ.get("XMRS_TEST_CRASH") == f"{stage}:{count}":
        sys.stdout.flush()
        os._exit(1)


# --------------------------------------------------------------------------- staging of token rows

class Stager:
    """Tokenises one language's recipes in batches and appends their rows to a staging file.

    The file holds, per recipe, the ids of its truncated title, ingredient and instruction parts
    (no CLS, no padding), as native int32; ``offsets[i]`` (in ids, -1 = not seen) and ``lens[i]``
    (the three part lengths) locate recipe ``i``. Batches are tokenised on the executor's thread
    while the caller parses the next ones.
    """

    def __init__(self, path: Path, encoder: ChunkEncoder, max_len: int, executor: ThreadPoolExecutor,
                 size: int = 1024):
        self.path = path
        self._file = open(path, "wb")  # closed by finish() or discard()
        self._encoder = encoder
        self._budget = 4 * (max_len - 1)  # bytes of ids after CLS
        self._executor = executor
        self.offsets = np.full(size, -1, dtype=np.int64)
        self.lens = np.zeros((size, 3), dtype=np.int32)
        self._cursor = 0
        self._pending: list[tuple[int, tuple[str, str, str]]] = []
        self._inflight = None  # (future, indices) of the batch being tokenised

    def add(self, index: int, texts: tuple[str, str, str]) -> None:
        """Queue recipe ``index``'s three part texts."""
        if index >= len(self.offsets):
            self._reserve(max(index + 1, 2 * len(self.offsets)))
        self._pending.append((index, texts))
        if len(self._pending) >= BATCH:
            self._submit()

    def _reserve(self, size: int) -> None:
        if size > len(self.offsets):
            self.offsets = np.concatenate([self.offsets, np.full(size - len(self.offsets), -1, np.int64)])
            self.lens = np.concatenate([self.lens, np.zeros((size - len(self.lens), 3), np.int32)])

    def _submit(self) -> None:
        batch, self._pending = self._pending, []
        texts = [t for _, triple in batch for t in triple]
        future = self._executor.submit(self._encoder, texts)
        self._drain()  # write the previous batch while this one is tokenised
        self._inflight = (future, [index for index, _ in batch])

    def _drain(self) -> None:
        if self._inflight is None:
            return
        future, indices = self._inflight
        self._inflight = None
        blobs = future.result()
        out: list[bytes] = []
        for k, index in enumerate(indices):
            budget = self._budget
            lengths = []
            for blob in blobs[3 * k:3 * k + 3]:  # title, ingredients, instructions
                blob = blob[:budget]
                budget -= len(blob)
                lengths.append(len(blob) // 4)
                out.append(blob)
            self.offsets[index] = self._cursor
            self.lens[index] = lengths
            self._cursor += sum(lengths)
        self._file.write(b"".join(out))

    def finish(self, n: int) -> StagedRows:
        """Flush everything; the rows of recipes ``0..n-1``."""
        if self._pending:
            self._submit()
        self._drain()
        self._file.close()
        self._reserve(n)
        return StagedRows(self.path, self.offsets[:n].copy(), self.lens[:n].copy())

    def discard(self) -> None:
        """Stop and delete the staging file (a language that is not indexed)."""
        if self._inflight is not None:
            self._inflight[0].result()
            self._inflight = None
        self._file.close()
        self.path.unlink(missing_ok=True)


class StagedRows:
    """Random access to the staged rows of one language."""

    def __init__(self, path: Path, offsets: np.ndarray, lens: np.ndarray):
        self.path, self.offsets, self.lens = path, offsets, lens
        self._fd: int | None = None

    def fill(self, index: int, ids_row: np.ndarray, parts_row: np.ndarray, cls_id: int) -> None:
        """Write recipe ``index``'s row into ``ids_row`` / ``parts_row`` (both zero, length max_len)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        lt, li, ls = (int(v) for v in self.lens[index])
        n = lt + li + ls
        tokens = np.frombuffer(os.pread(self._fd, 4 * n, 4 * int(self.offsets[index])), dtype=np.int32)
        ids_row[0] = cls_id
        ids_row[1:1 + n] = tokens
        parts_row[0] = PART_CLS
        parts_row[1:1 + lt] = PART_TITLE
        parts_row[1 + lt:1 + lt + li] = PART_INGR
        parts_row[1 + lt + li:1 + n] = PART_INST

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- the swap

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def recover(data_path: Path) -> bool:
    """Roll back a swap cut short (per the journal) and remove stale build folders.

    Call it holding the lock. Returns True when a swap was rolled back.
    """
    journal = data_path / JOURNAL
    rolled_back = False
    if journal.is_file():
        info = json.loads(journal.read_text(encoding="utf-8"))
        build, old = data_path / info["build"], data_path / info["old"]
        for name in info["names"]:
            current, previous, new = data_path / name, old / name, build / name
            if _exists(previous):  # moved aside: put it back
                if _exists(current):
                    _remove(current)
                os.rename(previous, current)
            elif _exists(current) and not _exists(new):  # moved in from the build, nothing was there before
                _remove(current)
        _fsync_dir(data_path)
        journal.unlink()
        _fsync_dir(data_path)
        rolled_back = True
    for stale in sorted(data_path.iterdir()):
        if stale.name.startswith((BUILD_PREFIX, OLD_PREFIX)) and stale.is_dir():
            shutil.rmtree(stale)
    return rolled_back


def swap_in(build: Path, data_path: Path) -> None:
    """Replace the outputs in ``data_path`` by those in ``build`` (see the module docstring)."""
    names = output_names()
    old = data_path / f"{OLD_PREFIX}{os.getpid()}"
    old.mkdir()
    atomic_write_json(data_path / JOURNAL, {"build": build.name, "old": old.name, "names": names})
    _fsync_dir(data_path)
    moves = 0
    for name in names:  # manifest.json first: a folder without it is visibly incomplete
        if _exists(data_path / name):
            os.rename(data_path / name, old / name)
            moves += 1
            crash_hook("swap", moves)
    for name in reversed(names):  # manifest.json last
        os.rename(build / name, data_path / name)
        moves += 1
        crash_hook("swap", moves)
    _fsync_dir(data_path)
    (data_path / JOURNAL).unlink()  # the commit point
    _fsync_dir(data_path)
    shutil.rmtree(old)
    shutil.rmtree(build)


@contextlib.contextmanager
def locked(data_path: Path):
    """Hold ``<data_path>/.create_lmdb.lock`` (one run per output folder)."""
    import fcntl

    fd = os.open(data_path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CreateLmdbError(f"{data_path}: another create_lmdb.py is writing here "
                                  f"({data_path / LOCK} is locked)") from None
        yield
    finally:
        os.close(fd)
