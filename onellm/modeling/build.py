"""Building a `OneLLM` from a `ModelConfig`: its parts, its vocabulary, its token layout.

The vocabulary is settled here, before the model exists: each modality's placeholder
`<m>` and each output's `<task>` token are added to the text tokenizer, and the LLM's
embeddings grow to fit the output tokens (placeholders are never embedded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from onellm.config import ModelConfig, check_kwargs
from onellm.data import output_scenes
from onellm.errors import ConfigError, RegistryError
from onellm.modeling.devices import DTYPES, resolve_device, resolve_dtype
from onellm.modeling.encoder import UniversalEncoder
from onellm.modeling.layout import TokenLayout
from onellm.modeling.llm import build_llm, build_text_tokenizer
from onellm.modeling.llm_experts import LLMExperts, expert_names
from onellm.modeling.modality import BindsEncoder, Modality, Renders, find_modality
from onellm.modeling.outputs import build_outputs
from onellm.modeling.projection import Routed
from onellm.modeling.quantize import Quantization, loading_config
from onellm.modeling.special_tokens import add_special_tokens
from onellm.registry import LLM_EXPERTS, MIXERS, MODALITIES, PROJECTIONS

if TYPE_CHECKING:
    from onellm.model import OneLLM


def build_modality(
    name: str, spec: Mapping[str, Any], encoder: UniversalEncoder | None = None
) -> Modality:
    """`{type: <registry name>, **kwargs}` (type defaults to `name`) -> a Modality, with
    sizes left unset taken from the encoder (image-like modalities' `bind`)."""
    kwargs = dict(spec or {})
    kind = kwargs.pop("type", name)
    cls = find_modality(kind, name)
    check_kwargs(cls, kwargs, f"modalities.{name}")
    mod = cls(**kwargs)
    if encoder is not None and isinstance(mod, BindsEncoder):
        mod.bind(encoder)
    return mod


def shapes_captions(modalities: Iterable[Modality]) -> list[str]:
    """The shapes world's captions of these modalities (their `captions()`), then the output
    tasks' prompts: what a tiny text tokenizer learns."""
    mine = [c for m in modalities if isinstance(m, Renders) for c in m.captions()]
    return [*mine, *output_scenes.captions()]


def embedding_rms(llm: nn.Module) -> float:
    """The RMS of the LLM's word embeddings: the scale new modality tokens start at (1 for
    an LLM built empty, whose weights a converter assigns next: onellm/checkpoints/convert.py)."""
    weight = llm.get_input_embeddings().weight
    return 1.0 if weight.is_meta else float(weight.detach().float().pow(2).mean().sqrt())


def name_table(modalities: Mapping[str, Modality]) -> dict[str, str]:
    """Every accepted name (config key, registry type, its aliases) -> config key."""
    table: dict[str, str] = {}
    for key, mod in modalities.items():
        kind = mod.name
        aliases = MODALITIES.aliases(kind) if kind in MODALITIES else []
        for n in (kind, *aliases):
            table.setdefault(n, key)
    table.update({k: k for k in modalities})
    return table


def build_moai(spec: Mapping[str, Any] | None, llm) -> nn.Module | None:
    """MoAI's sources, compressor and mixers from the `moai:` section, joined to `llm`'s
    chosen decoder layers (experts/moai/mixer.py); None without the section."""
    if spec is None:
        return None
    mixer = MIXERS.get("moai")
    check_kwargs(mixer, spec, "moai")
    moai = mixer(llm_width=llm.config.hidden_size, **spec)
    moai.attach(llm)
    return moai


# what build passes every `llm_experts:` kind itself (llm_experts.py), never a config key
MODEL_GIVEN = ("names", "llm_width", "llm_layers")


def build_llm_experts(spec: Mapping[str, Any] | None, layout: TokenLayout, llm) -> nn.Module | None:
    """The `llm_experts: {kind: ..., **options}` plug-in (onellm/modeling/llm_experts.py),
    constructed as `kind(names=..., llm_width=..., llm_layers=..., **options)`, not yet
    attached; None without the section. Unknown kinds and options are refused by name."""
    if spec is None:
        return None
    options = dict(spec)
    kind = options.pop("kind", None)
    try:
        cls = LLM_EXPERTS.get(kind) if isinstance(kind, str) else None
    except RegistryError:
        cls = None
    if cls is None:
        raise ConfigError(
            f"llm_experts.kind: expected one of {', '.join(LLM_EXPERTS.names())}, got {kind!r}"
        )
    for key in MODEL_GIVEN:
        if key in options:
            raise ConfigError(
                f"llm_experts.{key}: set from the model, not the config; got {options[key]!r}"
            )
    check_kwargs(cls, options, "llm_experts")
    names = expert_names(layout.placeholder_ids)
    c = llm.config
    experts = cls(names=names, llm_width=c.hidden_size, llm_layers=c.num_hidden_layers, **options)
    if not isinstance(experts, LLMExperts):
        raise ConfigError(f"llm_experts.kind: {kind!r} does not keep the LLMExperts contract")
    return experts


def run_lengths(projectors: Mapping[str, nn.Module]) -> dict[str, int]:
    """Each modality's placeholder run ({modality: its projection}): its projection's
    tokens and the two tags."""
    return {key: proj.num_tokens(key) + 2 for key, proj in projectors.items()}


def token_layout(
    tokenizer, llm, lengths: Mapping[str, int], output_tokens: Iterable[str] = ()
) -> TokenLayout:
    """Each modality's placeholder id (`<m>` in the tokenizer, added if new; without a
    tokenizer, one past the LLM's vocabulary) and run length in a `TokenLayout`."""
    names = list(lengths)
    if tokenizer is None:
        base = llm.config.vocab_size
        ids = {key: base + i for i, key in enumerate(names)}
        return TokenLayout(None, ids, lengths, bos_token_id=llm.config.bos_token_id)
    new = [f"<{k}>" for k in names if f"<{k}>" not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    ids = {key: tokenizer.convert_tokens_to_ids(f"<{key}>") for key in names}
    return TokenLayout(tokenizer, ids, lengths, output_tokens=list(output_tokens))


def build_projection(
    cfg: ModelConfig,
    encoder: UniversalEncoder,
    llm,
    type_: str | None = None,
    options: Mapping[str, Any] | None = None,
    where: str = "projection.options",
) -> nn.Module:
    """The projection kind `type_` (default `cfg.projection.type`; onellm/modeling/projection.py)
    with `options` (default `cfg.projection.options`); unknown types and options are
    refused by name."""
    p = cfg.projection
    type_, options = (p.type, p.options) if type_ is None else (type_, dict(options or {}))
    build = PROJECTIONS.get(type_)  # RegistryError listing the kinds
    return build(
        p, width=encoder.width, llm_width=llm.config.hidden_size, options=options, where=where
    )


def build_side_projections(cfg: ModelConfig, encoder: UniversalEncoder, llm) -> nn.ModuleDict:
    """The kinds `projection.by_modality` names ({modality: {type: kind, **options}}), one
    instance per kind, shared by the modalities that name it with the same options."""
    specs: dict[str, dict[str, Any]] = {}
    for m, spec in cfg.projection.by_modality.items():
        spec = dict(spec)
        kind = spec.pop("type", None)
        if not isinstance(kind, str):
            raise ConfigError(
                f"projection.by_modality.{m}: expected {{type: kind, ...}}, got {spec}"
            )
        if specs.setdefault(kind, spec) != spec:
            raise ConfigError(
                f"projection.by_modality.{m}: the {kind} kind is shared; its options "
                f"must match {specs[kind]}, got {spec}"
            )
    return nn.ModuleDict(
        {
            kind: build_projection(cfg, encoder, llm, kind, opts, f"projection.by_modality.{kind}")
            for kind, opts in specs.items()
        }
    )


def tokens_in(tokenizer: nn.Module, encoder: UniversalEncoder) -> int:
    """How many tokens (S+1) the encoder gives for a modality: its positional table's rows."""
    pos = tokenizer.position_embedding
    return int((encoder.position_embedding if pos is None else pos).shape[0])


def build_model(
    cfg: ModelConfig,
    model_class: type[OneLLM],
    device: Any = None,
    dtype: Any = None,
    quantization: Quantization | None = None,
) -> OneLLM:
    """A `model_class` (the composition root, onellm/model.py) of every part from `cfg`, on
    `device` (default cpu) in `dtype` (default the config's); `quantization`
    (onellm/modeling/quantize.py) is what quantises the LLM as it loads, if anything."""
    where = resolve_device("cpu" if device is None else device)
    cfg = dataclasses.replace(cfg, dtype=resolve_dtype(dtype, cfg.dtype, "config: dtype"))
    torch_dtype = DTYPES[cfg.dtype]
    encoder = UniversalEncoder.build(cfg.encoder)
    llm = build_llm(cfg.llm, torch_dtype, where, loading_config(quantization, torch_dtype))
    projection = build_projection(cfg, encoder, llm)
    side = build_side_projections(cfg, encoder, llm)
    projectors: dict[str, nn.Module] = {}
    modalities, tokenizers = {}, nn.ModuleDict()
    scale = embedding_rms(llm)
    for name, spec in cfg.modalities.items():
        modalities[name] = mod = build_modality(name, spec, encoder)
        tokenizers[name] = mod.build_tokenizer(encoder=encoder)
        kind = cfg.projection.kind_of(name)
        projectors[name] = proj = projection if kind is None else side[kind]
        proj.add_modality(
            name,
            output_scale=scale,
            experts=cfg.projection.routes.get(name),
            tokens_in=tokens_in(tokenizers[name], encoder),
        )
    llm.requires_grad_(False)  # frozen during alignment; stages unfreeze by pattern
    tok = build_text_tokenizer(cfg.llm, cfg.chat, shapes_captions(modalities.values()))
    # placeholders first, then output tokens: the order the ids of saved runs were given in
    layout = token_layout(tok, llm, run_lengths(projectors))
    token_ids: dict[str, int] = {}
    if cfg.outputs and tok is not None:  # without a tokenizer: ids only, no outputs
        added = add_special_tokens(tok, None, [f"<{t}>" for t in cfg.outputs])
        token_ids = {t: added[f"<{t}>"] for t in cfg.outputs}
        layout.output_tokens = list(added)
    outputs = build_outputs(
        cfg.outputs if token_ids else {},
        llm_width=llm.config.hidden_size,
        vocab_size=cfg.llm.vocab_size,
        tokenizer=tok,
        token_ids=token_ids,
    )
    if token_ids:  # the LLM grows its tables after the heads drew their random weights
        add_special_tokens(tok, llm, layout.output_tokens)
    experts = build_llm_experts(cfg.llm_experts, layout, llm)  # refused before anything runs
    model = model_class(
        config=cfg,
        modalities=modalities,
        tokenizers=tokenizers,
        encoder=encoder,
        projection=projection,
        llm=llm,
        text_tokenizer=tok,
        layout=layout,
        outputs=outputs,
        moai=build_moai(cfg.moai, llm),
        projections=side,
    )
    # built empty (parameters on meta, convert.py assigns them): only the dtype can change
    empty = any(p.is_meta for p in model.parameters())
    model = model.to(torch_dtype) if empty else model.to(where, torch_dtype)
    if experts is not None:  # joined once the LLM is where it runs (peft follows its dtype)
        model.llm_experts = experts.to(where, torch_dtype)
        experts.attach(model)
    return model


def parts_dtype(model: torch.nn.Module) -> str:
    """The config name of the model's dtype (`float32`, `bfloat16`, ...)."""
    return next(name for name, d in DTYPES.items() if d == model.dtype)


def rebuilt_config(model: OneLLM) -> ModelConfig:
    """The config that rebuilds `model` (`OneLLM.config`): its base config with what its
    modules say now (modalities, a routed projection's experts, routes and router, dtype).
    `llm_experts` is the base config's (merge_llm_experts sets it to None there)."""
    p, projection = model.projection, model.base_config.projection
    if isinstance(p, Routed):  # a routed projection (the UPM) grows experts and routes
        every = list(range(p.num_experts))
        routes = {m: list(r) for m, r in p.routes.items() if list(r) != every}
        projection = dataclasses.replace(
            projection, num_experts=p.num_experts, routes=routes, router=dict(p.router_spec)
        )
    return dataclasses.replace(
        model.base_config,
        modalities=dict(model.specs),
        projection=projection,
        dtype=parts_dtype(model),
    )
