"""Efficiency figures for every run's log (issue 38): at each log step, since the last one,

    tokens_per_s      LLM positions a second (every position a forward computes, padding too)
    padding_share     the share of those positions that are padding (0 for full packed rows)
    samples_per_s.<m> samples a second carrying modality m (`text`: carrying none)
    mfu               the model's FLOPs a second over the peak the run states at its start

The model's FLOPs are counted, not estimated: the first step of each source runs under
torch's `FlopCounterMode` (matmuls, convolutions, attention; forward and backward, frozen
parts included; eager, so a `compile: true` stage compiles on its next step), divided by
its LLM positions; later steps of that source count that many a
position. The peak: a GPU's datasheet figure for its name and the run's precision (dense,
no sparsity), or on the CPU the best of ten 1024 x 1024 matmuls (~0.3 s), measured once per
CPU, thread count and precision and kept in ~/.cache/onellm/peak_flops.json (measured on a
busy machine it reads low and MFU high: delete the file to measure again).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense TFLOP/s by GPU name fragment and precision (NVIDIA's datasheets; fp32 without TF32)
DATASHEET = {
    "H200": {"bf16": 989, "fp16": 989, "fp32": 67},
    "H100 PCIe": {"bf16": 756, "fp16": 756, "fp32": 51},
    "H100": {"bf16": 989, "fp16": 989, "fp32": 67},  # SXM
    "A100": {"bf16": 312, "fp16": 312, "fp32": 19.5},
    "L40S": {"bf16": 362, "fp16": 362, "fp32": 91.6},
    "L4": {"bf16": 121, "fp16": 121, "fp32": 30.3},
    "A10": {"bf16": 125, "fp16": 125, "fp32": 31.2},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_matmul(
    dtype: torch.dtype, n: int = 1024, runs: int = 10, device: torch.device | str = "cpu"
) -> float:
    """The best FLOP/s of an n x n matmul in `dtype` on `device` (on the CPU: this
    process's threads); the benches' roof (bench/common.py) is this at their sizes."""
    device = torch.device(device)
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


def probe_cpu(dtype: torch.dtype) -> float:
    """The CPU's peak for a run's MFU: `probe_matmul` at 1024, best of ten."""
    return probe_matmul(dtype)


def peak_flops(
    device: torch.device, precision: str, cache: Path | None = None
) -> tuple[float, str]:
    """-> (peak FLOP/s, where it comes from) for `device` at `precision` (fp32 | bf16 | fp16)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in DATASHEET.items():
            if key in name:
                return table[precision] * 1e12, f"{name} datasheet, {precision} dense"
        return 0.0, f"{name}: no datasheet peak known (mfu not logged)"
    key = f"{cpu_name()} | {torch.get_num_threads()} threads | {precision}"
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "onellm" / "peak_flops.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key not in known:
        known[key] = probe_cpu(DTYPES[precision])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    return known[key], f"{key}: matmul probe ({path})"


def batch_figures(batch: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """One micro-batch -> (LLM positions, padding positions, samples by modality)."""
    if "input_ids" not in batch:  # no LLM rows (a decoder's own pretraining)
        return 0, 0, {}
    ids = batch["input_ids"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    n = len(batch["unpack"]) if "unpack" in batch else ids.shape[0]
    counts = {m: len(x) for part in ("inputs", "features") for m, x in batch.get(part, {}).items()}
    carried = max(counts.values(), default=0)
    return (
        ids.numel(),
        ids.numel() - real,
        {**counts, **({"text": n - carried} if n > carried else {})},
    )


class Efficiency:
    """Counts a run's steps between log steps: `start(prepared)` before a step, `done()`
    after it, `figures(elapsed)` at a log step."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.peak, self.peak_source = peak_flops(device, precision)
        self.per_position: dict[Any, float] = {}  # counted FLOPs per LLM position, by source
        self.counter: contextlib.ExitStack | None = None
        self.reset()

    def reset(self) -> None:
        self.positions, self.padding, self.flops = 0, 0, 0.0
        self.samples: dict[str, int] = {}

    def start(self, prepared: tuple[Any, list]) -> None:
        key, batches = prepared
        parts = [b for bs in batches for b in bs] if isinstance(key, tuple) else batches
        figures = [batch_figures(b) for b in parts]
        self.step_positions = sum(f[0] for f in figures)
        self.positions += self.step_positions
        self.padding += sum(f[1] for f in figures)
        for f in figures:
            for m, n in f[2].items():
                self.samples[m] = self.samples.get(m, 0) + n
        self.key = key
        if key not in self.per_position and self.step_positions:
            self.counter = contextlib.ExitStack()
            # eager for the counted step: a compiled module's tracing would be counted too
            self.counter.enter_context(torch.compiler.set_stance("force_eager"))
            self.flop_counter = self.counter.enter_context(FlopCounterMode(display=False))

    def done(self) -> None:
        if self.counter is not None:
            self.counter.close()
            total = self.flop_counter.get_total_flops()
            self.per_position[self.key] = total / self.step_positions
            self.counter = None
        self.flops += self.per_position.get(self.key, 0.0) * self.step_positions

    def figures(self, elapsed: float, scale: float = 1.0) -> dict[str, Any]:
        """Since the last call: the figures to log (`scale`: all processes' share of work
        over this one's)."""
        out: dict[str, Any] = {
            "tokens_per_s": scale * self.positions / elapsed,
            "padding_share": self.padding / self.positions if self.positions else 0.0,
            **{f"samples_per_s.{m}": scale * n / elapsed for m, n in sorted(self.samples.items())},
        }
        if self.peak:
            out["mfu"] = scale * self.flops / elapsed / self.peak
        self.reset()
        return out
