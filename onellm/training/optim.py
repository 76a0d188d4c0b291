"""A stage's optimiser: AdamW over the trainable parameters, grouped by `lr_scale` globs,
and a linear warm-up then cosine schedule down to `min_lr_ratio`."""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from onellm.training.stage import StageConfig


def optimizer(root: nn.Module, cfg: StageConfig) -> tuple[torch.optim.AdamW, Any]:
    """-> (AdamW, its LambdaLR schedule) for `root`'s trainable parameters."""
    o = cfg.optimizer
    opt = torch.optim.AdamW(
        param_groups(root, o.lr, o.lr_scale),
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
        weight_decay=o.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def param_groups(root: nn.Module, lr: float, scales: dict[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters grouped by the first `lr_scale` glob their name matches."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in root.named_parameters():
        if p.requires_grad:
            bare = name.removeprefix("model.")
            scale = next(
                (
                    s
                    for pat, s in scales.items()
                    if fnmatch.fnmatchcase(bare, pat) or fnmatch.fnmatchcase(name, pat)
                ),
                1.0,
            )
            groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * s} for s, ps in groups.items()]


def lr_lambda(cfg: StageConfig):
    warm, total, floor = cfg.schedule.warmup_steps, cfg.steps, cfg.schedule.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
