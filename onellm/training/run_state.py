"""A stage's output directory: metrics, plots, resumable checkpoints, the final model.

    RUN/stage.yaml          the resolved stage config
    RUN/metrics.jsonl       one JSON object per line (train / eval / start events)
    RUN/report.json         the end-of-stage summary: held-out figures against the parent's
    RUN/plots/*.png         loss, held-out accuracy, routing weights
    RUN/checkpoints/step_N/ trainable.safetensors, optimizer.pt, trainer.json (atomic)
    RUN/final/              the model, `OneLLM.from_pretrained`-able, and trained_on.json
                            (what it was trained on, its held-out figures: lineage.py)
Only rank 0 writes. Checkpoints are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from onellm.checkpoints.pretrained import read_safetensors
from onellm.errors import CheckpointError
from onellm.training.distributed import Dist
from onellm.training.plots import plot_run

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class TrainState:
    """What a checkpoint holds and a resume restores. `root`: {"model", "aux"}, so that
    saved names read "model.*" / "aux.*"; only its trainable parameters are saved."""

    stage: str
    root: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


class RunFiles:
    def __init__(self, root: Path, d: Dist) -> None:
        self.root, self.d = root, d
        self.ckpts = root / "checkpoints"

    # ------------------------------------------------------------------ metrics
    def start(self, cfg: Any, trainable: int, total: int, resumed_at: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not resumed_at:  # a fresh run into an old dir: its metrics (and plots) start over
            (self.root / "metrics.jsonl").unlink(missing_ok=True)
        (self.root / "stage.yaml").write_text(
            yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
        )
        self.log(
            {
                "event": "start",
                "stage": cfg.name,
                "step": resumed_at,
                "trainable_params": trainable,
                "total_params": total,
                "processes": self.d.world,
                "time": time.time(),
            }
        )
        where = f"on {self.d.world} process(es)"
        print(f"[{cfg.name}] training {trainable:,} of {total:,} parameters {where}")

    def log(self, record: dict[str, Any]) -> None:
        if not self.d.main:
            return
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        plot_run(self.root)

    def report(self, report: dict[str, Any]) -> Path:
        """RUN/report.json: what the stage did, read by a person (onellm/training/summary.py)."""
        path = self.root / "report.json"
        path.write_text(json.dumps(report, indent=1))
        return path

    # ------------------------------------------------------------------ checkpoints
    def _state(self, state: TrainState) -> tuple[dict, dict]:
        model_sd, optim_sd = get_state_dict(
            state.root, state.optimizer, options=FULL
        )  # collective under FSDP
        names = {n for n, p in state.root.named_parameters() if p.requires_grad}
        return {k: v for k, v in model_sd.items() if k in names}, optim_sd

    def checkpoint(self, state: TrainState, step: int) -> Path:
        trainable, optim = self._state(state)
        target = self.ckpts / f"step_{step:07d}"
        if self.d.main:
            tmp = self.ckpts / f".tmp_step_{step:07d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(
                {k: v.contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors"
            )
            torch.save(
                {
                    "optimizer": optim,
                    "scheduler": state.scheduler.state_dict(),
                    "scaler": state.scaler.state_dict(),
                },
                tmp / "optimizer.pt",
            )
            (tmp / "trainer.json").write_text(json.dumps({"step": step, "stage": state.stage}))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)  # atomic: a checkpoint dir is complete or absent
            self.log({"event": "checkpoint", "step": step, "path": str(target)})
        return target

    def latest(self) -> Path | None:
        done = sorted(p for p in self.ckpts.glob("step_*") if (p / "trainer.json").is_file())
        return done[-1] if done else None

    def resume(self, state: TrainState) -> int:
        """Load the newest complete checkpoint into `state`; returns its step (0: none)."""
        ckpt = self.latest()
        if ckpt is None:
            return 0
        meta = json.loads((ckpt / "trainer.json").read_text())
        if meta.get("stage") != state.stage:
            raise CheckpointError(
                f"{ckpt}: belongs to stage {meta.get('stage')!r}, not {state.stage!r}"
            )
        trainable = read_safetensors(ckpt / "trainable.safetensors")
        saved = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        set_state_dict(
            state.root,
            state.optimizer,
            model_state_dict=trainable,
            optim_state_dict=saved["optimizer"],
            options=StateDictOptions(full_state_dict=True, strict=False),
        )
        state.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # fp16 runs: the loss scale goes on where it was
            state.scaler.load_state_dict(saved["scaler"])
        if self.d.main:
            print(f"[{state.stage}] resumed from {ckpt} at step {meta['step']}")
        return int(meta["step"])

    # ------------------------------------------------------------------ the result
    def save_final(self, state: TrainState, twin: Callable[[], Any]) -> Path:
        """RUN/final from the trained model; under FSDP rank 0 gathers the full weights
        into `twin()`, an unsharded model of the same build, and saves that."""
        final = self.root / "final"
        if self.d.world == 1:
            state.root["model"].save_pretrained(final)
            return final
        full, _ = get_state_dict(state.root, state.optimizer, options=FULL)  # collective
        if self.d.main:
            clean = twin()
            clean.load_state_dict(
                {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
            )
            clean.save_pretrained(final)
        self.d.barrier()
        return final
