"""The training loop's progress: the bar, and every `log_every` steps (and the last) a
`train` event in RUN/metrics.jsonl with the step's figures, every step's loss since the
last one (`losses`: [step, source, loss], for loss.png), the examples per second, the
share of that time spent waiting for data, the peak memory and the experts' use since the
last one (the projection's `routing`, the LLM's MoE layers' `llm_routing`; with the
collapse alarm's warnings)."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from onellm.modeling.devices import resolve_device
from onellm.training.efficiency import Efficiency
from onellm.training.moe import StepMoE
from onellm.training.run_state import RunFiles
from onellm.training.stage import StageConfig


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (workers not included), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KB here


class Progress:
    """`next(loader)` times the wait for a step's data, `done(step, ...)` counts the step
    and logs it when due (only the main process logs); `close()` ends the bar."""

    def __init__(
        self,
        cfg: StageConfig,
        files: RunFiles,
        moe: StepMoE,
        *,
        start: int,
        main: bool,
        quiet: bool,
    ) -> None:
        self.cfg, self.files, self.moe, self.main = cfg, files, moe, main
        self.bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=cfg.name,
            disable=not main or quiet,
            dynamic_ncols=True,
        )
        self.tick, self.seen, self.waited = time.perf_counter(), 0, 0.0
        self.losses: list[tuple[int, str, float]] = []
        # tokens_per_s, padding_share, samples_per_s.<m>, mfu (onellm/training/efficiency.py)
        self.efficiency = Efficiency(resolve_device(cfg.device), cfg.precision) if main else None
        if self.efficiency is not None:
            e = self.efficiency
            files.log({"event": "peak", "peak_flops": e.peak, "peak_source": e.peak_source})

    def next(self, loader: Iterator[Any]) -> Any:
        """The loader's next step, the time spent waiting for it counted."""
        t = time.perf_counter()
        prepared = next(loader)
        self.waited += time.perf_counter() - t
        if self.efficiency is not None:
            self.efficiency.start(prepared)
        return prepared

    def done(self, step: int, stats: dict[str, Any], examples: int) -> None:
        """Step number `step` (from 1) ran over `examples` examples (all processes) and gave
        `stats`."""
        self.seen += examples
        if self.efficiency is not None:
            self.efficiency.done()
        if self.main:  # the one that logs
            self.losses.append((step, stats["source"], round(stats["loss"], 5)))
        if self.main and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
            self.log(step, stats)
        self.bar.update(1)

    def log(self, step: int, stats: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.tick
        rate, wait = self.seen / elapsed, self.waited / elapsed
        self.tick, self.seen, self.waited = time.perf_counter(), 0, 0.0
        use = self.moe.report()  # expert use since the last log, the collapse alarm
        for warning in use.pop("warnings", []):
            tqdm.write(f"[{self.cfg.name}] warning: {warning}")
            self.files.log({"event": "warning", "step": step, "message": warning})
        figures = {"samples_per_s": rate, "data_wait": wait, "peak_rss_mb": peak_rss_mb()}
        figures |= self.efficiency.figures(elapsed, int(os.environ.get("WORLD_SIZE", 1)))
        losses, self.losses = self.losses, []
        self.files.log(
            {"event": "train", "step": step, **figures, **stats, **use, "losses": losses}
        )
        self.bar.set_postfix(
            loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}", sps=f"{rate:.0f}"
        )

    def close(self) -> None:
        self.bar.close()
