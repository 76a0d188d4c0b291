"""Model surgery: a new modality, a modality started from another, more experts by
sparse upcycling, LoRA on the LLM, the LLM's experts merged for one modality.

Each changes the model's modules; the saved config follows from them (`OneLLM.config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from onellm.errors import ConfigError, InputError, RegistryError
from onellm.modeling.build import (
    build_modality,
    embedding_rms,
    name_table,
    run_lengths,
    token_layout,
    tokens_in,
)
from onellm.modeling.llm import has_lora
from onellm.modeling.llm_experts import TEXT, MergesExperts, StartsFrom
from onellm.modeling.projection import Routed
from onellm.registry import MODALITIES

if TYPE_CHECKING:
    from onellm.model import OneLLM


def copy_matching(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter/buffer of `src` whose name and shape `dst` shares."""
    theirs = src.state_dict()
    with torch.no_grad():
        for n, t in dst.state_dict().items():
            if n in theirs and theirs[n].shape == t.shape:
                t.copy_(theirs[n])


def copy_modality_parts(proj: nn.Module, src: str, dst: str) -> None:
    """Start modality `dst` from `src`'s own parts of the projection: what each of its
    per-modality tables (a `ParameterDict` or `ModuleDict` keyed by modality: queries,
    in/out projections, tags, routers) holds for `src`. A routed projection's router rows
    for experts `src` does not route to start at the mean of its own rows."""
    routes = proj.routes if isinstance(proj, Routed) else {}
    with torch.no_grad():
        for table in proj.children():
            if not isinstance(table, (nn.ParameterDict, nn.ModuleDict)):
                continue
            if src not in table or dst not in table:
                continue
            theirs, ours = _entries(table[src]), _entries(table[dst])
            for n, t in ours.items():
                if theirs[n].shape == t.shape:
                    t.copy_(theirs[n])
                elif routes and t.dim() >= 1 and t.shape[0] == len(routes[dst]):
                    # a router's output layer: a row per expert
                    mean = theirs[n].mean(dim=0)
                    for row, e in enumerate(routes[dst]):
                        t[row] = theirs[n][routes[src].index(e)] if e in routes[src] else mean


def _entries(part: nn.Module | torch.Tensor) -> dict[str, torch.Tensor]:
    """A table's entry as name -> tensor (its state dict; a parameter is its own)."""
    return {"": part} if isinstance(part, torch.Tensor) else part.state_dict()


def init_modality_from(model: OneLLM, modality: str, source: str) -> None:
    """Start `modality`'s tokenizer and projection parts from `source`'s, where they fit,
    and its LLM expert from `source`'s where the model's `llm_experts` can (StartsFrom)."""
    dst, src = model.modality_key(modality), model.modality_key(source)
    if dst == src:
        raise ConfigError(f"modality {modality!r}: cannot start from itself")
    proj = model.projector(dst)
    if model.projector(src) is not proj:
        raise ConfigError(
            f"modality {modality!r}: {source!r} goes through another projection; "
            "start it from a modality that shares its projection"
        )
    copy_matching(model.tokenizers[src], model.tokenizers[dst])
    copy_modality_parts(proj, src, dst)
    if isinstance(model.llm_experts, StartsFrom):
        model.llm_experts.start_from(model, dst, src)


def add_modality(
    model: OneLLM,
    name: str,
    spec: Mapping[str, Any] | None = None,
    *,
    new_experts: int = 0,
    init_from: str | None = None,
    freeze_old: bool = True,
    upcycle_from: int | None = None,
    expert_noise: float = 0.0,
) -> list[str]:
    """Add modality `name` (`spec`: `{type: <registry name or file.py:Class>, **kwargs}`)
    with its own tokenizer and projection parts; `new_experts` more projection experts only
    it routes to (earlier modalities keep exactly theirs), copies of expert `upcycle_from`
    (default: expert i % K for the i-th), each weight scaled by 1 + expert_noise x N(0, 1);
    `init_from`: start from that modality's parts; `freeze_old`: only the new parameters
    train. -> the new parameters' names."""
    proj = model.projection
    if (new_experts or upcycle_from is not None) and not isinstance(proj, Routed):
        raise ConfigError(
            f"add_modality {name!r}: new_experts and upcycle_from grow a routed projection's "
            f"experts; the {model.base_config.projection.type} projection has none"
        )
    if upcycle_from is not None and not 0 <= upcycle_from < proj.num_experts:
        raise ConfigError(
            f"add_modality {name!r}: upcycle_from must be an expert in 0..{proj.num_experts - 1}, "
            f"got {upcycle_from}"
        )
    if name in model.names:
        raise ConfigError(f"modality {name!r}: this model already has it ({model.names[name]})")
    tok = model.text_tokenizer
    if name in MODALITIES.reserved or (tok is not None and f"<{name}>" in tok.get_vocab()):
        raise ConfigError(
            f"modality {name!r}: its placeholder <{name}> clashes with a special token; choose another name"
        )
    source = model.modality_key(init_from) if init_from is not None else None
    spec = dict(spec or {})
    mod = build_modality(name, spec, model.encoder)
    tokenizer = mod.build_tokenizer(encoder=model.encoder).to(model.device, model.dtype)
    before = {n for n, _ in model.named_parameters()}
    if new_experts:  # earlier modalities keep exactly the experts they route to
        proj.add_experts(new_experts, source=upcycle_from, noise=expert_noise)
    proj.add_modality(
        name, output_scale=embedding_rms(model.llm), tokens_in=tokens_in(tokenizer, model.encoder)
    )
    proj.to(model.device, model.dtype)
    model.tokenizers[name] = tokenizer
    model.modalities[name] = mod
    file, colon, attr = str(spec.get("type", "")).partition(":")
    if file.endswith(".py"):  # a saved run must find the plug-in from any directory
        spec["type"] = os.path.abspath(file) + colon + attr
    model.specs[name] = spec
    model.names = name_table(model.modalities)
    layout = token_layout(
        tok,
        model.llm,
        run_lengths({k: model.projector(k) for k in model.modalities}),
        model.layout.output_tokens,
    )
    model.layout = layout
    if model.llm_experts is not None:  # its expert in the LLM too (llm_experts.py)
        model.llm_experts.add_modality(model, name)
    if source is not None:
        init_modality_from(model, name, source)
    new = [n for n, _ in model.named_parameters() if n not in before]
    if freeze_old:
        model.requires_grad_(False)
        params = dict(model.named_parameters())
        for n in new:
            params[n].requires_grad_(True)
    return new


def upcycle(
    model: OneLLM,
    experts: int,
    *,
    sources: list[int] | None = None,
    noise: float = 0.0,
    router: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Sparse upcycling (MoE-LLaVA, CuMo): the projection's K trained experts become
    `experts`, the new ones copies of `sources` (default: expert i % K for the i-th new
    one), each weight scaled by 1 + noise x N(0, 1), every router that weighs a source
    extended to its copies (`UniversalProjection.upcycle`); `router` re-types the routers
    (`{type: topk, k: 2}`), keeping their MLPs. -> the new experts' indices."""
    proj = model.projection
    if not isinstance(proj, Routed):
        raise ConfigError(
            f"upcycle: the {model.base_config.projection.type} projection has no experts to upcycle"
        )
    old = proj.num_experts
    if experts < old:
        raise ConfigError(f"upcycle.experts: expected at least the model's {old}, got {experts}")
    sources = [i % old for i in range(experts - old)] if sources is None else list(sources)
    if len(sources) != experts - old or any(not 0 <= s < old for s in sources):
        raise ConfigError(
            f"upcycle.sources: expected {experts - old} experts in 0..{old - 1}, got {sources}"
        )
    if router is not None:  # refuse a bad router before anything changes
        if router.get("shared", 0) != proj.router_spec.get("shared", 0):
            raise ConfigError(
                "upcycle.router.shared: shared experts are fixed when the model is built"
            )
        for routes in proj.routes.values():
            count = len(routes) + sum(s in routes for s in sources)
            try:
                proj.build_router(count, dict(router))
            except (TypeError, ValueError, RegistryError) as e:
                raise ConfigError(f"upcycle.router: {e}") from None
    new = proj.upcycle(sources, noise=noise, generator=generator)
    if router is not None:
        proj.set_router(dict(router))  # OneLLM.config reads the spec back from the projection
    return new


def add_lora(
    model: OneLLM,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> None:
    """Wrap the LLM with peft LoRA adapters (only they train in the LLM afterwards). An LLM
    that has LoRA already (a saved run's, or lora_per_modality's experts) is refused: a
    stage's `lora:` adds one only where there is none (training/prepare.py), so on a model
    with per-modality LoRA experts the experts are the stage's LoRA (their r and alpha are
    `llm_experts:`'s)."""
    if has_lora(model.llm):
        raise InputError("llm: LoRA is already on")
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
    )
    model.llm = get_peft_model(model.llm, cfg)


def merge_llm_experts(model: OneLLM, modality: str = TEXT) -> OneLLM:
    """Fold `modality`'s LLM expert (`llm_experts:`, e.g. its LoRA) into the LLM's plain
    weights, in place: the model becomes a dense one (no `llm_experts`, its config says so)
    that answers a prompt of that modality alone as the experts did, with one matmul per
    layer less to run and nothing to route. -> the model.

    Per modality, because routing is: each position runs its own modality's expert, and a
    prompt with one modality is that modality's from its first token to its last
    (onellm/modeling/llm_experts.py), so one expert folded in is exact for such prompts;
    other modalities' prompts would run the folded expert instead of theirs. Copy the model
    first (`copy.deepcopy`) to keep the experts. `modality`: a modality's name, or "text"."""
    experts = model.llm_experts
    if experts is None:
        raise InputError("merge_llm_experts: this model has no llm_experts")
    if not isinstance(experts, MergesExperts):
        kind = (model.base_config.llm_experts or {}).get("kind")
        raise InputError(f"merge_llm_experts: the {kind} kind does not fold into plain weights")
    if model.quantization is not None:
        raise InputError(
            "merge_llm_experts: the LLM is quantised; merge the model it was loaded from"
        )
    name = modality if modality == TEXT else model.modality_key(modality)
    experts.merge(model, name)
    model.llm_experts = None
    model.base_config = dataclasses.replace(model.base_config, llm_experts=None)
    return model
