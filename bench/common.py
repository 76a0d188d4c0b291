"""What every benchmark shares: the machine's peak matmul rate and the process's peak RSS."""

from __future__ import annotations

import resource
import sys
import time

import torch


def peak_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5) -> float:
    """Best FLOP/s of an n x n @ n x n matmul in `dtype` (the roof MFU is measured against).

    bf16 uses n = 1024 and 2 runs: CPUs without bf16 instructions run it ~100x slower.
    """
    if dtype != torch.float32:
        n, runs = min(n, 1024), min(runs, 2)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024
