"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
OLD_TEMP_SECONDS = 24 * 3600  # a temporary file without a writer's id is stale after a day


def _temp_name(path: Path) -> str:
    """The prefix of ``path``'s temporary files: ``.<name>.<host>-<pid>.`` (mkstemp adds 8 characters, ``.tmp``)."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes of ``path`` killed midway left (a kill skips any cleanup).

    A file is stale when its writer (host and process id in its name) is a process of this host
    that has ended; a temporary file named without a writer's id (older versions) when it is
    older than ``OLD_TEMP_SECONDS``. Another host's files are left alone. Returns the removed files.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:([A-Za-z0-9-]+)-(\d+)\.)?[a-z0-9_]{8}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match is None:
                continue
            host, pid = match.groups()
            try:
                stale = (host == _HOST and not _alive(int(pid)) if pid is not None
                         else time.time() - entry.stat().st_mtime > OLD_TEMP_SECONDS)
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:  # gone meanwhile, or not ours to remove
                continue
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; temporary files
    of earlier writes of ``path`` that were killed midway are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(path), suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON (UTF-8, not ASCII-escaped) to ``path`` atomically."""
    dump_kwargs.setdefault("ensure_ascii", False)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, **dump_kwargs)
