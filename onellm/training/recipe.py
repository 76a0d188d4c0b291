"""The one training recipe for every stage, in torchtune's shape: `setup()` (model,
freezing, optimiser, data), `train()`, `save()`, `cleanup()`.

    onellm train configs/stages/stage1_image.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node=8 -m onellm.cli train STAGE.yaml    (FSDP2; NCCL on GPUs, gloo on CPU)

What a source's task does (its examples, batches, loss, metric) lives in onellm/tasks/;
the starting model in prepare.py; what trains in freezing.py; one optimiser step in
optimizer_step.py; the log in progress.py; the run's files in run_state.py; where it runs
in onellm/modeling/devices.py. Step s draws its source and examples from (seed, s) alone
(onellm/data/loader.py), so a resumed run replays exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from onellm.data import feature_cache
from onellm.data.loader import StepBatches, step_loader, steps
from onellm.model import OneLLM
from onellm.modeling import activation_checkpointing
from onellm.modeling.devices import PRECISIONS, grad_scaler, move
from onellm.training import distributed, vocabulary
from onellm.training.freezing import apply_trainable
from onellm.training.lineage import read_lineage, write_lineage
from onellm.training.moe import StepMoE
from onellm.training.optim import optimizer
from onellm.training.optimizer_step import OptimizerStep
from onellm.training.prepare import compile_projection, prepare_model, stage_sources, task_modules
from onellm.training.progress import Progress
from onellm.training.replay import plan_replay, replay_line
from onellm.training.run_state import RunFiles, TrainState
from onellm.training.stage import StageConfig
from onellm.training.stage_eval import StageEval
from onellm.training.summary import StageSummary, output_lines

__all__ = ["Recipe", "read_metrics", "train"]


class Recipe:
    """One stage of training. `Recipe(cfg).setup()`, then `train()`, `save()`, `cleanup()`
    (or `train(cfg)`, which runs all four)."""

    def __init__(self, cfg: StageConfig, *, resume: bool = False, quiet: bool = False) -> None:
        self.cfg, self.resume, self.quiet = cfg, resume, quiet
        self.step = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> Recipe:
        cfg = self.cfg
        self.d = distributed.init(cfg.device)
        self.device = self.d.device
        torch.manual_seed(cfg.seed)
        # what the starting model was trained on, and its replay beside the stage's data
        self.parent = read_lineage(cfg.init_from)
        replay, self.replay = plan_replay(cfg, self.parent)
        cfg = self.cfg = dataclasses.replace(cfg, data={**cfg.data, **replay})
        # the model, its sources, and the modules its tasks train beside it
        self.model, added = prepare_model(cfg, self.device)
        self.sources = stage_sources(self.model, cfg)
        self.data = StepBatches(cfg, self.sources, self.model, rank=self.d.rank, world=self.d.world)
        # held-out sets: the stage's, those the parent was measured on, and the parent's
        # figures on them (before sharding: rank 0 may evaluate the starting model)
        self.held_out = StageEval(cfg, self.sources, self.model)
        self.summary = StageSummary(cfg, self.parent, self.replay, self.held_out)
        self.summary.parent_figures(self.model, measure=self.d.main)
        self.aux = task_modules(self.model, self.sources, self.device)
        self.moe = StepMoE(cfg.moe, self.model.projection, self.d, self.model.llm_experts)  # MoE
        # one root so that names (for patterns and checkpoints) are "model.*" / "aux.*"
        self.root = nn.ModuleDict({"model": self.model, "aux": self.aux})
        # freezing, and how the trained blocks run
        self.n_trainable, self.n_total = apply_trainable(
            self.root, cfg.trainable, added, world=self.d.world
        )
        # caption words the LLM never said, before sharding (vocabulary.py)
        self.vocabulary = vocabulary.check(self.model, self.sources)
        self.model.train()
        self.cache_notes: dict[str, str] = {}
        if cfg.feature_cache:  # before sharding: the whole encoder runs on rank 0
            self.cache_notes = feature_cache.attach(
                self.model,
                self.sources,
                cfg.feature_cache,
                rank=self.d.rank,
                world=self.d.world,
                workers=cfg.data_workers,
                precision=cfg.precision,
                quiet=self.quiet or not self.d.main,
            )
        if cfg.activation_checkpointing:
            activation_checkpointing.enable(self.model)
        if self.d.world > 1:
            distributed.shard(self.model, self.d.mesh, PRECISIONS[cfg.precision])
        if cfg.compile:
            compile_projection(self.model.projection)
        # the optimiser, and the state a checkpoint holds
        self.optimizer, self.scheduler = optimizer(self.root, cfg)
        self.scaler = grad_scaler(self.device, cfg.precision, self.d.world)
        self.state = TrainState(cfg.name, self.root, self.optimizer, self.scheduler, self.scaler)
        self.optimizer_step = OptimizerStep(cfg, self.state, self.sources, self.moe, self.d)
        self.params = self.optimizer_step.params
        # the run's files; a resume restores the state and the step
        self.files = RunFiles(Path(cfg.output_dir), self.d)
        self.step = self.files.resume(self.state) if self.resume else 0
        if self.d.main:
            self.files.start(cfg, self.n_trainable, self.n_total, resumed_at=self.step)
            vocabulary.announce(self.vocabulary, self.files, cfg.name, quiet=self.quiet)
            self.files.log({"event": "replay", **self.replay})
            self.files.log({"event": "packing", "packing": self.data.packing})
            said = [replay_line(cfg.name, self.replay)] if self.parent else []
            for line in [*said, *(f"[{cfg.name}] {n}" for n in self.held_out.notes)]:
                print(line)
            if self.cache_notes:
                self.files.log({"event": "feature_cache", "sources": self.cache_notes})
            for name, note in self.cache_notes.items():
                if not self.quiet:
                    tqdm.write(f"feature cache: data.{name} {note}")
        return self

    # ------------------------------------------------------------------ data
    def batch_size(self, key: str) -> int:
        return self.data.batch_size(key)

    def source_for(self, step: int) -> str:
        return self.data.source_for(step)

    def micro_batches(self, step: int, key: str) -> list[dict[str, Any]]:
        """This process's share of step `step`'s batches from source `key`, on the model's
        device and dtype."""
        return [move(b, self.device, self.model.dtype) for b in self.data.batches(step, key)]

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int, prepared: tuple[Any, list] | None = None) -> dict[str, Any]:
        """One optimiser step on step `step`'s batches (`prepared`: as the loader gave them)."""
        key, batches = prepared if prepared is not None else self.data[step]
        return self.optimizer_step(key, batches)

    def train(self) -> None:
        cfg = self.cfg
        progress = Progress(
            cfg, self.files, self.moe, start=self.step, main=self.d.main, quiet=self.quiet
        )
        loader = steps(step_loader(self.data, self.step, self.device))
        while self.step < cfg.steps:
            prepared = progress.next(loader)
            stats = self.train_step(self.step, prepared)
            self.step += 1
            progress.done(self.step, stats, self.data.examples(prepared[0]))
            if self.step == cfg.steps:  # the last step's evaluation and model are save()'s
                break
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.d.world == 1:
                self.files.log({"event": "eval", "step": self.step, **self.held_out(self.model)})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.files.checkpoint(self.state, self.step)
        progress.close()

    # ------------------------------------------------------------------ save, cleanup
    def save(self) -> Path:
        """RUN/final, its held-out evaluation, and the run's plots."""
        twin = lambda: prepare_model(self.cfg, torch.device("cpu"))[0]  # noqa: E731
        final = self.files.save_final(self.state, twin)
        if not self.d.main:
            return final
        record: dict[str, Any] = {}
        if self.held_out or self.summary.extra:
            # under FSDP the training model is sharded; rank 0 evaluates the saved one
            model = (
                self.model
                if self.d.world == 1
                else OneLLM.from_pretrained(final, device=self.device)
            )
            record = self.held_out(model, self.summary.extra)
            self.files.log({"event": "eval", "step": self.step, "final": True, **record})
        # against the parent's figures: printed, RUN/report.json, RUN/final/trained_on.json
        rows = record.get("held_out", [])
        report = self.summary.report(rows, read_metrics(self.cfg.output_dir), final, self.step)
        self.files.report(report.pop("json"))
        write_lineage(final, self.parent, self.cfg.name, self.sources, rows)
        if not self.quiet:
            print(
                "\n".join(
                    [report["table"], *output_lines(self.cfg.name, record.get("outputs", {}))]
                )
            )
        self.files.plot()
        return final

    def cleanup(self) -> None:
        distributed.cleanup(self.d)


def train(cfg: StageConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run one stage; returns the directory of the final saved model."""
    recipe = Recipe(cfg, resume=resume, quiet=quiet).setup()
    try:
        recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """RUN/metrics.jsonl as a list of its records."""
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
