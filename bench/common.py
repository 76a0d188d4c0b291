"""What every benchmark shares: the machine's peak matmul rate and the process's peak RSS
(`peak_rss_mb`, the one the training log uses)."""

from __future__ import annotations

import time

import torch

from onellm.training.progress import peak_rss_mb  # noqa: F401  (re-exported for the benchmarks)


def peak_matmul_flops(
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    runs: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """Best FLOP/s of an n x n @ n x n matmul in `dtype` on `device` (the roof MFU is
    measured against). On the CPU, half precisions use n = 1024 and 2 runs: CPUs without
    bf16 instructions run it ~100x slower. On a GPU, n = 8192 (the tensor cores' rate)."""
    device = torch.device(device)
    if device.type == "cuda":
        n, runs = 8192, 10
    elif dtype not in (torch.float32, torch.float64):
        n, runs = min(n, 1024), min(runs, 2)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
