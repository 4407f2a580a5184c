"""Run folders and text logs (SPEC section 8)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from utils.io import atomic_write_text


def new_run_dir(runs_dir: str | Path, suffix: str = "", kind: str = "train") -> Path:
    """Create ``<runs_dir>/<%Y%m%d-%H%M%S>__<kind><suffix>/``, adding ``_2``, ``_3``... when taken."""
    return unique_dir(Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}__{kind}{suffix}")


def unique_dir(base: Path) -> Path:
    """Create the folder ``base`` (parents too), or ``base_2``, ``base_3``... when it exists."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def write_opts(path: str | Path, opts: dict) -> None:
    """Write options as ``key: value`` lines (human-readable) followed by nothing else."""
    lines = [f"{key}: {json.dumps(value)}" for key, value in sorted(opts.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_opts(path: str | Path) -> dict:
    """Read an ``opts.txt`` written by :func:`write_opts`."""
    opts = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise ValueError(f"{path}: line {number} is not 'key: value': {line!r}")
        opts[key] = json.loads(value)
    return opts


class TextLog:
    """Append lines to a text file (and echo them) on the main process; silent elsewhere."""

    def __init__(self, path: str | Path | None, echo: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.echo = echo

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"[{stamp}] {message}\n")
        if self.echo:
            print(message, flush=True)
