"""Part of a model's weights as one safetensors file: written from a saved run
(`onellm export RUN OUT --keys 'outputs.*.decoder.*'`) and loaded over a stage's starting
model (a stage's `load_weights:`). The demo's tiny SAM and UNet are pretrained once this way
and kept in the repository (configs/weights/, `make tiny-decoders` rebuilds them).

The file holds the tensors sorted by name and no time or path, so the same weights give the
same bytes (its sha256 says whether a rebuild reproduced them).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from onellm.checkpoints.pretrained import read_safetensors
from onellm.errors import CheckpointError, ConfigError


def select(state: dict[str, torch.Tensor], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors of `state` whose names match one of the `keys` globs, by name."""
    keys = list(keys)
    picked = {k: v for k, v in sorted(state.items()) if any(fnmatch.fnmatch(k, g) for g in keys)}
    if not picked:
        raise ConfigError(
            f"--keys: expected globs that name some of the model's tensors, got {keys} "
            f"(names look like {sorted(state)[:3]})"
        )
    return picked


def export_weights(
    model: torch.nn.Module, keys: Iterable[str], out: str | os.PathLike
) -> tuple[Path, list[str]]:
    """Write the model's tensors matching `keys` to `out` (safetensors); -> the path and
    the names written."""
    picked = select(model.state_dict(), keys)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in picked.items()}, out)
    return out, list(picked)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the tensors in `path` over the model's of the same names; every name must be
    one of the model's, at its shape (a `CheckpointError` otherwise, and nothing loads).
    -> the names loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"load_weights: expected a safetensors file, got {path}")
    given = read_safetensors(path)
    own = model.state_dict()
    wrong = [k for k in given if k not in own or own[k].shape != given[k].shape]
    if wrong:
        k = wrong[0]
        has = tuple(own[k].shape) if k in own else "no such tensor"
        raise CheckpointError(
            f"{path}: {len(wrong)} tensors do not fit the model, e.g. {k} "
            f"{tuple(given[k].shape)} (the model: {has})"
        )
    model.load_state_dict(given, strict=False)
    return sorted(given)


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
