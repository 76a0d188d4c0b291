"""One optimiser step of a stage: forward and backward over the step's micro-batches, the
MoE losses, gradient sync and clipping, then the optimiser and the schedule.

A source's loss is summed over its task's items (target tokens or samples) and divided by
their count on all processes, so N processes match one with the same batch. With
`mix_sources` each micro-batch draws its own source, its loss a mean over its own items
divided by the step's number of sources. The projection's routings, and those of the LLM's
MoE layers (`llm_experts: {kind: moe_layers}`), are recorded through the step for the MoE
losses and the expert-use figures (onellm/training/moe.py).
"""

from __future__ import annotations

from typing import Any

import torch

from onellm.data.sources import Source
from onellm.modeling.devices import autocast, move
from onellm.training import distributed
from onellm.training.distributed import Dist
from onellm.training.moe import StepMoE
from onellm.training.run_state import TrainState
from onellm.training.stage import StageConfig
from onellm.training.task import Step


class OptimizerStep:
    """`step(key, batches)`: one optimiser step on a step's batches as the loader gives
    them (`key` a source, or a tuple of one source per micro-batch when sources mix)."""

    def __init__(
        self,
        cfg: StageConfig,
        state: TrainState,
        sources: dict[str, Source],
        moe: StepMoE,
        d: Dist,
    ) -> None:
        self.cfg, self.state, self.sources, self.moe, self.d = cfg, state, sources, moe, d
        self.model, self.aux = state.root["model"], state.root["aux"]
        self.params = [p for p in state.root.parameters() if p.requires_grad]

    def backward(self, key: str, batches: list[dict[str, Any]], share: int):
        """Forward and backward over one source's micro-batches; their loss is a mean over
        the task's items on all processes, divided by `share` (the step's sources, mixed).
        -> (the loss, each micro-batch's extra figures)."""
        cfg, task, device = self.cfg, self.sources[key].task, self.d.device
        batches = [move(b, device, self.model.dtype) for b in batches]
        # per-process normaliser: FSDP averages gradients over processes
        count = torch.tensor(float(sum(task.items(b) for b in batches)), device=device)
        items = self.d.all_sum(count) / self.d.world
        accum = cfg.grad_accum if share == 1 else 1  # a mixed step's source: one micro-batch
        step_ctx = Step(self.model, self.aux, self.sources[key].modality, accum)
        logged, extras = torch.zeros((), device=device), []
        for batch in batches:
            with autocast(device, cfg.precision):
                loss, extra = task.loss(step_ctx, batch, items)
            if share > 1:
                loss = loss / share
            if loss.requires_grad:  # a frozen modality's replay reaches no trainable part
                self.state.scaler.scale(loss).backward()
            logged += loss.detach().float()
            extras.append(extra)
        return logged, extras

    def __call__(self, key: str | tuple[str, ...], batches: list) -> dict[str, Any]:
        """One optimiser step. -> the figures to log (loss, source, grad_norm, lr, the MoE
        terms and the tasks' extra figures)."""
        parts = list(zip(key, batches, strict=True)) if isinstance(key, tuple) else [(key, batches)]
        with self.moe.recording():  # the routings, for the MoE losses and the expert-use figures
            done = [self.backward(k, b, len(parts)) for k, b in parts]
        with autocast(self.d.device, self.cfg.precision):
            moe_loss, moe_stats = self.moe.finish()
        scaler, opt = self.state.scaler, self.state.optimizer
        if moe_loss is not None and moe_loss.requires_grad:
            scaler.scale(moe_loss).backward()
        logged = sum(d[0] for d in done)
        extras = [e for d in done for e in d[1]]
        stepped = any(p.grad is not None for p in self.params)
        if stepped:
            scaler.unscale_(opt)  # fp16: clip the true gradients
        distributed.sync_replicated_grads(self.params, self.d.world)
        norm = distributed.clip_grad_norm(self.params, self.cfg.grad_clip, self.d)
        if stepped:
            scaler.step(opt)
            scaler.update()
        else:  # nothing reached a trainable part: a no-op step keeps the schedule's order
            opt.step()
        self.state.scheduler.step()
        opt.zero_grad(set_to_none=True)
        stats = {
            "loss": float(self.d.all_sum(logged)) / self.d.world,
            "source": key if len(parts) == 1 else "mixed",
            "grad_norm": norm,
            "lr": max(self.state.scheduler.get_last_lr()),
            **moe_stats,
        }
        for name in {k for e in extras for k in e}:  # e.g. the decoder's part of the loss
            values = [e[name] for e in extras if name in e]
            stats[name] = sum(values) / len(values)
        return stats
