"""The checks each verb's arguments get before torch loads (seconds): a path that is not
there, a YAML that does not parse or a model config with an unknown key is one line at
once (`onellm info /bad/path`: ~0.1 s, was ~12 s), not after the heavy stack has loaded.

They look at files and configs only; the library checks the same again where it reads
them (`from_pretrained`, `read_manifest`), for callers that do not come through here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from onellm.cli.convert_options import check_convert
from onellm.config import is_config, load_config
from onellm.config.loading import apply_override, find_config
from onellm.errors import CheckpointError, ConfigError, InputError


def check_run(run: str, overrides: Sequence[str] = ()) -> None:
    """RUN as the model verbs read it: a model YAML or shipped name (read and validated,
    with its overrides), or a folder `save_pretrained` wrote."""
    if is_config(run):
        load_config(run, overrides)
        return
    d = Path(run)
    if not (d / "config.yaml").is_file() or not (d / "model.safetensors").is_file():
        raise CheckpointError(
            f"{d}: not a saved onellm model (expected config.yaml and model.safetensors)"
        )
    if overrides:
        raise ConfigError("key=value overrides apply to a YAML config, not a saved run")


def check_stage(stage: str, overrides: Sequence[str]) -> None:
    """A stage recipe: there, valid YAML, its overrides `key=value` (its keys are checked
    when the stage loads, with torch: the stage schema lives beside the trainer)."""
    path = find_config(stage)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)


def check_file(path: str | None, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise InputError(f"{what}: expected a JSONL file, got {path!r} (no such file)")


def chat_input(values: Sequence[str] | None):
    """`--input` as given: one path; several as a pair (`--input rgb.png --input d.png`);
    `part=path` items (`--input rgb=a.png --input depth=a_d.png`, or one `rgb=a.png,depth=a_d.png`)
    as the dict the paired modalities (depth, normal) read."""
    if not values:
        return None
    items = [v for value in values for v in (value.split(",") if "=" in value else [value])]
    named = ["=" in v for v in items]
    if any(named) and not all(named):
        raise ConfigError(f"--input: expected every part as name=path or none, got {items}")
    if all(named):
        return dict(v.split("=", 1) for v in items)
    return items[0] if len(items) == 1 else tuple(items)


def check_chat(args: argparse.Namespace) -> None:
    check_run(args.run)
    source = chat_input(args.input)
    if isinstance(source, dict):
        paths = list(source.values())
    else:
        paths = list(source) if isinstance(source, tuple) else [source] if source else []
    for path in paths:
        if not Path(path).exists():  # a folder of frames is an input too
            name = args.modality or "--input"
            raise InputError(f"{name}: expected a readable file, got {path!r} (no such file)")


def check_eval(args: argparse.Namespace) -> None:
    check_run(args.run)
    check_file(args.data, "--data")


def check_fixture(args: argparse.Namespace) -> None:
    if not Path(args.fixture).is_dir():
        raise InputError(f"conformance: expected a fixture folder, got {args.fixture!r}")


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "info": lambda a: check_run(a.run, a.overrides),
    "chat": check_chat,
    "serve": lambda a: check_run(a.run),
    "train": lambda a: check_stage(a.stage, a.overrides),
    "cache-features": lambda a: check_stage(a.stage, a.overrides),
    "shards": lambda a: check_file(a.manifest, "manifest"),
    "eval": check_eval,
    "conformance": check_fixture,
    "convert": check_convert,
    "export": lambda a: check_run(a.run),
}


def check(args: argparse.Namespace) -> None:
    """The checks of `args.command` (none for the verbs that read no path: demo)."""
    if args.command in CHECKS:
        CHECKS[args.command](args)
