"""YAML configs: one small resolver, then dataclasses that reject unknown keys by name.

A config is a YAML path or the name of one the package ships (`tiny`, `stage1_image`:
configs/ installs as `onellm.configs`). A relative path written inside a YAML file, at a
key that names a file to read (`PATH_KEYS`: init_from, a source's data, a plug-in's file,
base-model dirs), resolves against that file's folder when it names something there
(`data: train.jsonl` beside the recipe); otherwise it stays relative to the working
directory, where runs go (`runs/demo/stage1`, an earlier stage's output).

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
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from onellm.config.schema import ModelConfig
from onellm.errors import ConfigError

S = TypeVar("S")
_REF = re.compile(r"\$\{([^}]+)\}")


# ----------------------------------------------------------------------------- loading
def load_config(
    path: str | os.PathLike | Mapping,
    overrides: Iterable[str] = (),
    schema: type[S] = ModelConfig,  # type: ignore[assignment]
) -> S:
    """Read a YAML file (a path, or a shipped config's name) or a mapping, apply `key=value`
    overrides, resolve, validate."""
    if isinstance(path, Mapping):
        data: Any = _deepcopy(path)
    else:
        p = find_config(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        data = _beside(data, p.parent)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    data = resolve(data)
    return from_dict(schema, data)


def packaged_configs() -> dict[str, Path]:
    """The configs the package ships, by name: model configs, then stage recipes."""
    root = Path(str(resources.files("onellm.configs")))
    found = {p.stem: p for p in sorted((root / "stages").glob("*.yaml"))}
    return found | {p.stem: p for p in sorted(root.glob("*.yaml"))}


def find_config(ref: str | os.PathLike) -> Path:
    """A YAML file: `ref` itself where it is one, else the shipped config named `ref`."""
    p = Path(ref)
    if p.is_file():
        return p
    shipped = packaged_configs()
    if str(ref) in shipped:
        return shipped[str(ref)]
    raise ConfigError(
        f"config {str(ref)!r}: no such file, and no shipped config of that name "
        f"(shipped: {', '.join(sorted(shipped))})"
    )


def is_config(ref: str | os.PathLike) -> bool:
    """Whether `ref` names a YAML config (a .yaml path or a shipped name), not a saved run."""
    p = Path(ref)
    return p.suffix in (".yaml", ".yml") or (not p.is_dir() and str(ref) in packaged_configs())


# the keys that name files to read: in a YAML file, a relative one is read beside the file
# (when it names something there; `*` stands for any one key)
PATH_KEYS = (
    "init_from",  # a stage's starting model
    "load_weights",  # weights loaded over it (a list)
    "data.*.data",  # a source's manifest or shards
    "eval.data.*",  # a stage's held-out manifests
    "add_modality.type",  # a modality plug-in's file
    "encoder.path",
    "llm.path",
    "llm.tokenizer",
    "modalities.*.type",
    "outputs.*.decoder.path",
    "outputs.*.decoder.checkpoint",
)


def _beside(data: Any, folder: Path) -> Any:
    """`data` with each relative path under `PATH_KEYS` that names something in `folder`
    made absolute (a `file.py:Class` keeps its `:Class`)."""
    for key in PATH_KEYS:
        _resolve_at(data, key.split("."), folder)
    return data


def _resolve_at(node: Any, parts: list[str], folder: Path) -> None:
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    for k in list(node) if head == "*" else [head] if head in node else []:
        if rest:
            _resolve_at(node[k], rest, folder)
        elif isinstance(node[k], list):
            node[k] = [_beside_one(v, folder) for v in node[k]]
        else:
            node[k] = _beside_one(node[k], folder)


def _beside_one(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or "${" in value:
        return value
    path, colon, attr = value.partition(":")
    if path and not Path(path).is_absolute() and _exists(folder / path):
        return str((folder / path).resolve()) + colon + attr
    return value


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to be a file
        return False


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
