"""What every benchmark shares: the machine's peak matmul rate and the process's peak RSS
(`peak_rss_mb`, the one the training log uses)."""

from __future__ import annotations

import torch

from onellm.training.efficiency import probe_matmul
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
    return probe_matmul(dtype, n, runs, device)
