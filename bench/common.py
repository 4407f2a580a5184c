"""What every benchmark's ``main`` does around its measurement: thread count and ``--json``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from utils.io import atomic_write_json


def run_with_threads(run: Callable[[object], dict], args) -> dict:
    """Call ``run(args)`` with ``args.threads`` torch threads (when set; restored after) and write
    its results to ``args.json`` (when set) atomically. Returns the results."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = run(args)
    finally:
        torch.set_num_threads(threads)
    if args.json:
        atomic_write_json(args.json, results, indent=1)
    return results
