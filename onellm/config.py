"""YAML configs: one small resolver, then dataclasses that reject unknown keys by name.

`load_config(path, overrides)` reads YAML, applies `a.b=c` overrides, resolves `${a.b}`
(another key of the same file) and `${env:NAME}` / `${env:NAME,default}` (environment),
and validates the result into a dataclass tree (`ModelConfig` unless `schema` says
otherwise). Errors are `ConfigError`s that name the offending key.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from onellm.errors import ConfigError

S = TypeVar("S")
_REF = re.compile(r"\$\{([^}]+)\}")


# ----------------------------------------------------------------------------- schema
@dataclasses.dataclass
class EncoderConfig:
    """Universal encoder: a CLIP vision tower (local HF dir, or random from these sizes)."""

    path: str | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass
class LLMConfig:
    """The language model: `LlamaForCausalLM` (local HF dir, or random from these sizes)."""

    path: str | None = None
    tokenizer: str | None = None  # HF tokenizer dir; defaults to `path`
    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int = 192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    attn_implementation: str = "auto"  # auto: flash_attention_2 on CUDA when installed, else sdpa


@dataclasses.dataclass
class ProjectionConfig:
    """How encoder features become LLM tokens. `type`: the projection kind (experts/projections.py):
    `upm` (OneLLM's universal projection module: K experts of N blocks, per-modality queries
    and routers; the fields below), `perceiver` (BLIP-3) or `mlp` (LLaVA), each with its
    own keyword arguments in `options`; `num_queries` and `num_heads` are shared.
    `by_modality` gives single modalities another kind (`{image: {type: mlp}}`)."""

    type: str = "upm"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the kind's own arguments
    # modality -> {type: kind, **options}: another kind for that modality (one instance per kind)
    by_modality: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def kind_of(self, modality: str) -> str | None:
        """The kind `by_modality` gives `modality`, or None (it goes through `type`)."""
        return self.by_modality.get(modality, {}).get("type")

    num_experts: int = 3
    layers_per_expert: int = 8
    num_heads: int = 16
    num_queries: int = 30
    ffn_hidden_size: int | None = None  # None: LLaMA's rule from the width and multiple_of
    multiple_of: int = 256
    norm_eps: float = 1e-5
    router_hidden_size: int | None = None  # None: 4 x encoder width, as OneLLM
    router: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "soft"})
    # modality -> the expert indices its router weighs; absent: all (see add_modality)
    routes: dict[str, list[int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ChatConfig:
    """The conversation layout, used the same way in training and in inference.

    A prompt renders as `system`, then per turn `user + question + separator + assistant`
    followed (in history and in training) by `answer + separator`. Generation stops at EOS
    or at any of `stop`. With no prompt and no history the model captions its input (the
    alignment stages' layout: the modality block, then the caption).
    """

    system: str = ""
    user: str = "### Human: "
    assistant: str = "### Assistant: "
    separator: str = "\n"
    stop: list[str] = dataclasses.field(default_factory=lambda: ["###"])


@dataclasses.dataclass
class OutputConfig:
    """One output task (`seg`, `gen`): its special token's head and its decoder.

    `decoder`: `{type: sam | diffusion, **kwargs}` (experts/decoders/). `tokens`: signal
    tokens per group (gen: N `<gen>` in a row make one image). `head`: extra head kwargs.
    """

    decoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    experts: int = 2
    use_embedding: bool = True
    tokens: int = 1
    head: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: dict[str, float] = dataclasses.field(default_factory=dict)  # seg: bce, dice; gen: mse
    # whether the decoder's loss reaches the LLM (LISA: yes). Measured in stage 5 (600 steps):
    # with it seg_miou 0.44, without 0.28 (caption forgetting the same either way)
    tune_llm: bool = True


@dataclasses.dataclass
class ModelConfig:
    """The whole model. `modalities` maps a name to `{type: <registry name>, **kwargs}`."""

    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    modalities: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    chat: ChatConfig = dataclasses.field(default_factory=ChatConfig)
    outputs: dict[str, OutputConfig] = dataclasses.field(default_factory=dict)  # <seg>, <gen>, ...
    # MoAI's auxiliary sources, compressor and mixer (experts/moai.py); None: none
    moai: dict[str, Any] | None = None
    dtype: str = "float32"
    vars: dict[str, Any] = dataclasses.field(default_factory=dict)  # free-form, for ${vars.x}


# ----------------------------------------------------------------------------- loading
def load_config(
    path: str | os.PathLike | Mapping,
    overrides: Iterable[str] = (),
    schema: type[S] = ModelConfig,  # type: ignore[assignment]
) -> S:
    """Read a YAML file (or a mapping), apply `key=value` overrides, resolve, validate."""
    if isinstance(path, Mapping):
        data: Any = _deepcopy(path)
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    data = resolve(data)
    return from_dict(schema, data)


def apply_override(data: dict, item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def resolve(data: dict) -> dict:
    """Resolve `${a.b}` and `${env:NAME[,default]}` references everywhere in `data`."""

    def lookup(ref: str, seen: tuple[str, ...]) -> Any:
        if ref.startswith("env:"):
            name, _, default = ref[4:].partition(",")
            if name in os.environ:
                return os.environ[name]
            if default:
                return default
            raise ConfigError(f"${{{ref}}}: environment variable {name} is not set")
        if ref in seen:
            raise ConfigError(f"${{{ref}}}: circular reference ({' -> '.join(seen)})")
        node: Any = data
        for part in ref.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"${{{ref}}}: no such key in the config")
            node = node[part]
        return walk(node, (*seen, ref))

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        if isinstance(node, str):
            whole = _REF.fullmatch(node)
            if whole:  # a lone reference keeps the referenced value's type
                return lookup(whole.group(1), seen)
            return _REF.sub(lambda m: str(lookup(m.group(1), seen)), node)
        return node

    return walk(data, ())


def from_dict(schema: type[S], data: Any, where: str = "") -> S:
    """Build dataclass `schema` from `data`, naming any unknown key or wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {_join(where, unknown[0])!r}; allowed here: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(schema)
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and _required(f)]
    if missing:
        raise ConfigError(f"missing key {_join(where, missing[0])!r}")
    return schema(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A dataclass config as plain data (for saving next to weights)."""
    return dataclasses.asdict(cfg)


def check_kwargs(factory: Any, kwargs: Mapping[str, Any], where: str) -> None:
    """Raise `ConfigError` naming the first key `factory` does not accept."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {_join(where, key)!r}; allowed here: {', '.join(sorted(allowed))}"
            )


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (vt,) = typing.get_args(tp)
        return [_coerce(vt, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-5 as a string
        except ValueError:
            pass
    if tp is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)  # e.g. from an environment variable
    if (
        isinstance(tp, type)
        and isinstance(value, tp)
        and not (tp is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _deepcopy(m: Any) -> Any:
    if isinstance(m, Mapping):
        return {k: _deepcopy(v) for k, v in m.items()}
    if isinstance(m, list):
        return [_deepcopy(v) for v in m]
    return m
