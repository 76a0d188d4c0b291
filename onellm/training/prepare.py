"""A stage's starting point: the model (a model YAML or a saved run) with the LoRA, upcycled
experts and added modality the stage asks for, the modules its tasks train beside it, and
how its trained blocks run (compiled)."""

from __future__ import annotations

import torch
from torch import nn

from onellm.checkpoints.weights import load_weights
from onellm.config import is_config
from onellm.data.sources import Source
from onellm.errors import ConfigError, InputError
from onellm.model import OneLLM
from onellm.modeling import surgery
from onellm.modeling.llm import has_lora
from onellm.modeling.projection import Routed
from onellm.training.stage import StageConfig


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
    for path in cfg.load_weights:
        load_weights(model, path)
    if cfg.lora is not None and not has_lora(model.llm):
        lo = cfg.lora
        model.add_lora(
            r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=tuple(lo.target_modules)
        )
    if cfg.upcycle is not None:  # seeded: a resume or FSDP's saving twin gets the same copies
        u = cfg.upcycle
        seeded = torch.Generator().manual_seed(cfg.seed)
        surgery.upcycle(
            model, u.experts, sources=u.sources, noise=u.noise, router=u.router, generator=seeded
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


def stage_sources(model: OneLLM, cfg: StageConfig) -> dict[str, Source]:
    """The stage's data sources by key, each with its task."""
    return {k: Source(model, k, s, cfg.seed) for k, s in cfg.data.items()}


def task_modules(model: OneLLM, sources: dict[str, Source], device: torch.device) -> nn.ModuleDict:
    """The modules the sources' tasks train beside the model (each task once), on `device`
    in the model's dtype."""
    tasks = {s.task.name: s.task for s in sources.values()}
    aux = nn.ModuleDict({n: m for t in tasks.values() for n, m in t.aux(model).items()})
    return aux.to(device, model.dtype)


def compile_projection(projection: nn.Module) -> None:
    """`compile: true`: a routed projection's expert pool as one module (bench/: ~1.3x a
    step), another kind's heavy blocks each."""
    parts = [projection.experts] if isinstance(projection, Routed) else projection.blocks()
    for part in parts:
        part.compile()
