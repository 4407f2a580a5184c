"""What the benchmarks share: thread count and ``--json`` around ``run``, optimiser-step timing,
per-step seeding and bitwise comparison of the paths' final weights."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

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


class OptimizerClock:
    """Wall time spent inside ``optimizer.step()`` of some optimisers, through step hooks (so it counts
    the steps a ``GradScaler`` or a script's own function makes, without touching that code)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.total, self._start = 0.0, 0.0
        for opt in optimizers:
            opt.register_step_pre_hook(self._begin)
            opt.register_step_post_hook(self._end)

    def _begin(self, *_) -> None:
        self._start = time.perf_counter()

    def _end(self, *_) -> None:
        self.total += time.perf_counter() - self._start

    def take(self) -> float:
        """Seconds counted since the last call."""
        total, self.total = self.total, 0.0
        return total


def seed_step(seed: int, step: int) -> None:
    """Seed the global RNG before a path's step (outside its timing): every path draws the same
    dropout masks and noise at step ``step``, so paths that should compute the same thing can be
    compared bit for bit afterwards (:func:`same_state`)."""
    torch.manual_seed(seed * 100_003 + step)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """True when every parameter and buffer of ``a`` and ``b`` is bitwise equal (memory format aside)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def script_defaults(parser, names: tuple[str, ...]) -> argparse.Namespace:
    """The default values of a script's flags ``names`` (what it runs with when they are not given),
    read from its parser without parsing (the script may require other flags)."""
    values = {name: parser.get_default(name) for name in names}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise RuntimeError(f"{parser.prog}: no default for {', '.join(missing)}; the benchmark needs updating")
    return argparse.Namespace(**values)
