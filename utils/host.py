"""How fast this machine multiplies matrices: the figure the demo sizes its time estimate by."""

from __future__ import annotations

import time

import torch


def matmul_flops(n: int = 2048, reps: int = 4) -> float:
    """Best FLOP/s of an ``n x n`` fp32 matmul on this machine, now (one warm-up, then ``reps`` timed)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best
