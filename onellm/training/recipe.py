"""The one training recipe for every stage, in torchtune's shape: `setup()` (model,
freezing, optimiser, data), `train()`, `save()`, `cleanup()`.

    onellm train configs/stages/stage1_image.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node=8 -m onellm.cli train STAGE.yaml    (FSDP2; NCCL on GPUs, gloo on CPU)

What a source's task does (its examples, batches, loss, metric) lives in onellm/tasks/;
what trains in onellm/freezing.py; where it runs in onellm/devices.py. Step s draws its
source and examples from (seed, s) alone, so a resumed run replays exactly what an
uninterrupted one would. Losses are summed over the task's items (target tokens or
samples) and divided by the global count, so N processes match one with the same batch.
With `mix_sources` each micro-batch draws its own source (its loss a mean over its own
items, divided by their number). The projection's routings are recorded through the step
for the MoE losses and the expert-use figures (onellm/moe.py, `moe:` in the stage).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from onellm.config import is_config
from onellm.data import feature_cache
from onellm.data.loader import StepBatches, step_loader, steps
from onellm.data.sources import Source
from onellm.errors import ConfigError, InputError
from onellm.model import OneLLM
from onellm.modeling import activation_checkpointing, surgery
from onellm.modeling.devices import PRECISIONS, autocast, grad_scaler, move
from onellm.training import distributed
from onellm.training.evaluate import StageEval
from onellm.training.freezing import apply_trainable
from onellm.training.moe import StepMoE
from onellm.training.optim import optimizer
from onellm.training.run_state import RunFiles, TrainState
from onellm.training.stage import StageConfig
from onellm.training.task import Step


def prepare_model(cfg: StageConfig, device: torch.device) -> tuple[OneLLM, list[str]]:
    """The stage's starting model (a model YAML or a saved run) on `device`, with LoRA and
    an added modality if the stage asks. -> (model, names of the parameters add_modality
    created)."""
    src = cfg.init_from
    if is_config(src):  # a model YAML (a path or a shipped name), else a saved run
        model = OneLLM.from_config(src, cfg.model_overrides, device=device)
    else:
        model = OneLLM.from_pretrained(
            src, trainable_lora=True, device=device, overrides=cfg.model_overrides
        )
    if cfg.lora is not None and not hasattr(model.llm, "peft_config"):
        lo = cfg.lora
        model.add_lora(
            r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=tuple(lo.target_modules)
        )
    if cfg.upcycle is not None:  # seeded: a resume or FSDP's saving twin gets the same copies
        u = cfg.upcycle
        surgery.upcycle(
            model,
            u.experts,
            sources=u.sources,
            noise=u.noise,
            router=u.router,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    added: list[str] = []
    if cfg.add_modality is not None:
        a = cfg.add_modality
        spec = {**({"type": a.type} if a.type else {}), **a.options}
        added = model.add_modality(
            a.name,
            spec,
            new_experts=a.new_experts,
            init_from=a.init_from,
            upcycle_from=a.upcycle_from,
            expert_noise=a.expert_noise,
        )
    for new, trained in cfg.init_modalities.items():
        try:
            model.init_modality_from(new, trained)
        except (InputError, ConfigError) as e:
            raise ConfigError(f"init_modalities.{new}: {e}") from e
    return model, added


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (workers not included), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KB here


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
        # the model, its sources, and the modules its tasks train beside it
        self.model, added = prepare_model(cfg, self.device)
        self.sources = {k: Source(self.model, k, s, cfg.seed) for k, s in cfg.data.items()}
        self.data = StepBatches(cfg, self.sources, self.model, rank=self.d.rank, world=self.d.world)
        self.held_out = StageEval(cfg, self.sources, self.model)
        tasks = {s.task.name: s.task for s in self.sources.values()}  # each task once
        self.aux = nn.ModuleDict(
            {n: m for t in tasks.values() for n, m in t.aux(self.model).items()}
        )
        self.aux.to(self.device, self.model.dtype)
        self.moe = StepMoE(cfg.moe, self.model.projection, self.d)  # MoE losses, expert use
        # one root so that names (for patterns and checkpoints) are "model.*" / "aux.*"
        self.root = nn.ModuleDict({"model": self.model, "aux": self.aux})
        # freezing, and how the trained blocks run
        self.n_trainable, self.n_total = apply_trainable(
            self.root, cfg.trainable, added, world=self.d.world
        )
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
            for key in cfg.data:
                if self.batch_size(key) % self.d.world:
                    raise ConfigError(
                        f"data.{key}: batch_size {self.batch_size(key)} must divide "
                        f"by the {self.d.world} processes"
                    )
            distributed.shard(self.model, self.d.mesh, PRECISIONS[cfg.precision])
        if cfg.compile:  # the UPM's expert pool as one (bench/: ~1.3x a step); other kinds' blocks
            proj = self.model.projection
            for part in [proj.experts] if hasattr(proj, "experts") else proj.blocks():
                part.compile()
        # the optimiser
        self.params = [p for p in self.root.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = optimizer(self.root, cfg)
        self.scaler = grad_scaler(self.device, cfg.precision, self.d.world)
        self.state = TrainState(cfg.name, self.root, self.optimizer, self.scheduler, self.scaler)
        # the run's files; a resume restores the state and the step
        self.files = RunFiles(Path(cfg.output_dir), self.d)
        self.step = self.files.resume(self.state) if self.resume else 0
        if self.d.main:
            self.files.start(cfg, self.n_trainable, self.n_total, resumed_at=self.step)
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

    # ------------------------------------------------------------------ one step
    def step_examples(self, key: str | tuple[str, ...]) -> int:
        """The examples (all processes) of a step reading `key` (mixed: one per micro-batch)."""
        if isinstance(key, tuple):
            return sum(self.batch_size(k) for k in key)
        return self.batch_size(key) * self.cfg.grad_accum

    def backward(self, key: str, batches: list[dict[str, Any]], share: int):
        """Forward and backward over one source's micro-batches; their loss is a mean over
        the task's items on all processes, divided by `share` (the step's sources, mixed).
        -> (the loss, each micro-batch's extra figures)."""
        cfg, task = self.cfg, self.sources[key].task
        batches = [move(b, self.device, self.model.dtype) for b in batches]
        # per-process normaliser: FSDP averages gradients over processes
        count = torch.tensor(float(sum(task.items(b) for b in batches)), device=self.device)
        items = self.d.all_sum(count) / self.d.world
        accum = cfg.grad_accum if share == 1 else 1  # a mixed step's source: one micro-batch
        step_ctx = Step(self.model, self.aux, self.sources[key].modality, accum)
        logged, extras = torch.zeros((), device=self.device), []
        for batch in batches:
            with autocast(self.device, cfg.precision):
                loss, extra = task.loss(step_ctx, batch, items)
            if share > 1:
                loss = loss / share
            if loss.requires_grad:  # a frozen modality's replay reaches no trainable part
                self.scaler.scale(loss).backward()
            logged += loss.detach().float()
            extras.append(extra)
        return logged, extras

    def train_step(self, step: int, prepared: tuple[Any, list] | None = None) -> dict[str, Any]:
        """One optimiser step on step `step`'s batches (`prepared`: as the loader gave them)."""
        cfg = self.cfg
        key, batches = prepared if prepared is not None else self.data[step]
        parts = list(zip(key, batches, strict=True)) if isinstance(key, tuple) else [(key, batches)]
        with self.moe.recording():  # the routings, for the MoE losses and the expert-use figures
            done = [self.backward(k, b, len(parts)) for k, b in parts]
        with autocast(self.device, cfg.precision):
            moe_loss, moe_stats = self.moe.finish()
        if moe_loss is not None and moe_loss.requires_grad:
            self.scaler.scale(moe_loss).backward()
        logged = sum(d[0] for d in done)
        extras = [e for d in done for e in d[1]]
        stepped = any(p.grad is not None for p in self.params)
        if stepped:
            self.scaler.unscale_(self.optimizer)  # fp16: clip the true gradients
        distributed.sync_replicated_grads(self.params, self.d.world)
        norm = distributed.clip_grad_norm(self.params, cfg.grad_clip, self.d)
        if stepped:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:  # nothing reached a trainable part: a no-op step keeps the schedule's order
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {
            "loss": float(self.d.all_sum(logged)) / self.d.world,
            "source": key if len(parts) == 1 else "mixed",
            "grad_norm": norm,
            "lr": max(self.scheduler.get_last_lr()),
            **moe_stats,
        }
        for name in {k for e in extras for k in e}:  # e.g. the decoder's part of the loss
            values = [e[name] for e in extras if name in e]
            stats[name] = sum(values) / len(values)
        return stats

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=cfg.name,
            disable=not self.d.main or self.quiet,
            dynamic_ncols=True,
        )
        tick, seen, waited = time.perf_counter(), 0, 0.0
        loader = steps(step_loader(self.data, self.step, self.device))
        while self.step < cfg.steps:
            t = time.perf_counter()
            prepared = next(loader)
            waited += time.perf_counter() - t
            stats = self.train_step(self.step, prepared)
            seen += self.step_examples(prepared[0])
            self.step += 1
            if self.d.main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                elapsed = time.perf_counter() - tick
                rate, wait = seen / elapsed, waited / elapsed
                tick, seen, waited = time.perf_counter(), 0, 0.0
                use = self.moe.report()  # expert use since the last log, the collapse alarm
                for warning in use.pop("warnings", []):
                    tqdm.write(f"[{cfg.name}] warning: {warning}")
                    self.files.log({"event": "warning", "step": self.step, "message": warning})
                self.files.log(
                    {
                        "event": "train",
                        "step": self.step,
                        "samples_per_s": rate,
                        "data_wait": wait,
                        "peak_rss_mb": peak_rss_mb(),
                        **stats,
                        **use,
                    }
                )
                bar.set_postfix(
                    loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}", sps=f"{rate:.0f}"
                )
            bar.update(1)
            last = self.step == cfg.steps
            if (
                cfg.eval.every
                and self.step % cfg.eval.every == 0
                and not last
                and self.d.world == 1
            ):
                self.files.log({"event": "eval", "step": self.step, **self.held_out(self.model)})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                self.files.checkpoint(self.state, self.step)
        bar.close()

    # ------------------------------------------------------------------ save, cleanup
    def save(self) -> Path:
        """RUN/final, its held-out evaluation, and the run's plots."""
        twin = lambda: prepare_model(self.cfg, torch.device("cpu"))[0]  # noqa: E731
        final = self.files.save_final(self.state, twin)
        if self.d.main and self.held_out:
            # under FSDP the training model is sharded; rank 0 evaluates the saved one
            model = (
                self.model
                if self.d.world == 1
                else OneLLM.from_pretrained(final, device=self.device)
            )
            self.files.log(
                {"event": "eval", "step": self.step, "final": True, **self.held_out(model)}
            )
        if self.d.main:
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
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
