"""The modality plug-in contract, its registry, and the input checks every modality shares.

A modality is one file in `modalities/` (or the user's own package) holding a class that
satisfies `Modality` and ends in `MODALITIES.register(...)`. Nothing in `onellm/` names a
modality.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from onellm.errors import ConfigError, InputError
from onellm.modeling.media_limits import check_tensor, read_npy, read_npz
from onellm.registry import MODALITIES


class EncoderInfo(Protocol):
    """What a tokenizer may read from the universal encoder it feeds."""

    width: int
    image_size: int
    patch_size: int


@runtime_checkable
class ModalityTokenizer(Protocol):
    """`forward(x (B, *input_shape), encoder) -> (B, T, S, W)`; T frames are mean-pooled later.

    `position_embedding` is a (S+1, W) parameter, or None to use the encoder's own (the
    image-like modalities, which also use the encoder's patch embedding).
    """

    position_embedding: nn.Parameter | None

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor: ...


@runtime_checkable
class Modality(Protocol):
    """A modality: its sizes (from config), raw -> tensor preprocessing, and its tokenizer."""

    name: str

    def input_shape(self) -> tuple[int | None, ...]:
        """Per-sample shape that `preprocess` returns and the tokenizer takes (None: any)."""
        ...

    def preprocess(self, raw: Any) -> torch.Tensor:
        """One raw sample (path, PIL, numpy, tensor, ...) -> float tensor of `input_shape()`."""
        ...

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module: ...

    # Optional parts, each a protocol below that the core checks with isinstance.


def find_modality(kind: str, name: str | None = None) -> type:
    """The modality class for a config's `type` (`name`: its config key, the default type).

    `kind` is tried as: a registered name; an entry point of group `onellm.modalities` (how
    the shipped modalities and installed plug-ins are found); an import path
    `pkg.module[:Class]`; a file `path/to/file.py[:Class]`. Importing a module registers
    what it defines; without `:Class` the modality registered as `name` is taken.
    """
    if kind in MODALITIES:  # registered, or named by an installed package's entry point
        return MODALITIES.get(kind)
    target, _, attr = kind.partition(":")
    if attr or "." in target:  # pkg.module, module:Class, path/file.py
        module = _import(target, kind)
        return _registered(getattr(module, attr) if attr else module, name or kind, kind)
    return MODALITIES.get(kind)  # raises RegistryError listing the registered names


def _import(target: str, kind: str):
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            module_name = f"onellm_plugin_{path.stem}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or not path.is_file():
                raise FileNotFoundError(path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
        return importlib.import_module(target)
    except (ImportError, FileNotFoundError) as e:
        raise ConfigError(f"modality type {kind!r}: cannot import {target!r}: {e}") from e


def _registered(obj, name: str, kind: str) -> type:
    """A loaded entry point / import: a class is returned as is; a module must have registered `name`."""
    if isinstance(obj, type):
        return obj
    if name in MODALITIES:
        return MODALITIES.get(name)
    raise ConfigError(
        f"modality type {kind!r}: imported, but it registered no modality named {name!r}; "
        "end the file with MODALITIES.register(name, cls) or name the class as module:Class"
    )


@runtime_checkable
class BindsEncoder(Protocol):
    """Fills sizes left unset from the encoder (image-like modalities take its image size)."""

    def bind(self, encoder: EncoderInfo) -> None: ...


@runtime_checkable
class Renders(Protocol):
    """Synthetic scenes of the shapes world, and every caption it can give (what a tiny
    text tokenizer learns)."""

    def render(self, rng: np.random.Generator) -> Any: ...

    def captions(self) -> list[str]: ...


@runtime_checkable
class Writes(Protocol):
    """Writes a raw input as the file its users have (a path, or a dict of paths), which
    `preprocess` reads back as it reads `raw` (the contract suite checks)."""

    def write(self, raw: Any, stem: Path) -> Any: ...


@runtime_checkable
class HasPixels(Protocol):
    """An input a `<seg>` mask can be drawn on: `pixels(raw) -> (3, H, W)` in [0, 1]."""

    def pixels(self, raw: Any) -> torch.Tensor: ...


@runtime_checkable
class Paired(Protocol):
    """An input of two files: an rgb image and its `second` map (depth, normal)."""

    second: str


@runtime_checkable
class SampleLists(Protocol):
    """Says a list is one input (a waveform), not a batch, in chat."""

    def is_sample(self, raw: Any) -> bool: ...


@runtime_checkable
class TakesUpload(Protocol):
    """A modality whose raw input is one common file, `upload`: "image", "audio" or "video"
    (the file OpenAI's `image_url`, `input_audio` and vLLM's `video_url` parts carry, and
    the player the UI shows for it)."""

    upload: str


# ----------------------------------------------------------------------------- input checks
def check_batch(name: str, x: Any, shape: tuple[int | None, ...]) -> torch.Tensor:
    """Validate a batched model input (B, *shape) for modality `name`; return it unchanged.

    Raises `InputError` naming the modality, what was expected and what was given.
    """
    want = "(B, " + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a tensor of shape {want}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating-point tensor {want}, got dtype {x.dtype}")
    if x.dim() != len(shape) + 1:
        raise InputError(
            f"{name}: expected rank {len(shape) + 1} {want}, got rank {x.dim()} {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise InputError(f"{name}: expected a non-empty tensor {want}, got {tuple(x.shape)}")
    for got, exp in zip(x.shape[1:], shape, strict=True):
        if exp is not None and got != exp:
            raise InputError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: expected finite values, got NaN or Inf in {tuple(x.shape)}")
    return x


def as_float_array(name: str, raw: Any, what: str) -> np.ndarray:
    """A numpy array, tensor or nested list -> float32 numpy array, checked for emptiness/NaN."""
    if isinstance(raw, torch.Tensor):
        arr = raw.detach().cpu().float().numpy()
    else:
        try:
            arr = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"{name}: expected {what}, got {type(raw).__name__}") from e
    if arr.size == 0:
        raise InputError(f"{name}: expected {what}, got an empty array {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: expected finite values in {what}, got NaN or Inf")
    return arr


def as_path(raw: Any) -> Path | None:
    """`raw` as a Path when it is a str/PathLike, else None."""
    return Path(raw) if isinstance(raw, (str, os.PathLike)) else None


def check_readable(name: str, path: Path, suffixes: tuple[str, ...] = ()) -> Path:
    """Raise `InputError` unless `path` is an existing file (with one of `suffixes`, if given)."""
    if not path.is_file():
        raise InputError(f"{name}: expected a readable file, got {str(path)!r} (no such file)")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(
            f"{name}: expected a file ending in {', '.join(suffixes)}, got {str(path)!r}"
        )
    return path


ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".csv", ".txt")


def load_array_file(
    name: str, path: Path, suffixes: tuple[str, ...] = ARRAY_SUFFIXES
) -> np.ndarray:
    """Read a numeric array file safely: `.npy`, `.npz` (its first array), `.pt` (a tensor,
    `torch.load(weights_only=True)`), `.csv` (commas) or other text (whitespace)."""
    suffix = path.suffix.lower()
    check_readable(name, path, suffixes)
    try:
        if suffix == ".npy":  # headers checked against ONELLM_MAX_ARRAY_MB first
            return read_npy(name, path)
        if suffix == ".npz":
            return read_npz(name, path)
        if suffix == ".pt":
            t = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"it holds a {type(t).__name__}, not a tensor")
            check_tensor(name, t, repr(str(path)))
            return t.float().numpy()
        delim = "," if suffix == ".csv" else None
        return np.loadtxt(path, delimiter=delim, dtype=np.float32, ndmin=2)
    except (InputError, ConfigError):  # the limits' own errors, already clear
        raise
    except (ValueError, OSError, IndexError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise InputError(
            f"{name}: expected a numeric array file, got unreadable {str(path)!r}: {e}"
        ) from e
