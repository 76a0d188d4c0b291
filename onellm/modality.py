"""The modality plug-in contract, its registry, and the input checks every modality shares.

A modality is one file in `modalities/` (or the user's own package) holding a class that
satisfies `Modality` and ends in `MODALITIES.register(...)`. Nothing in `onellm/` names a
modality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from onellm.errors import InputError
from onellm.registry import Registry


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

    # Optional: `bind(encoder)` fills sizes left unset from the encoder (image-like
    # modalities take its image size); `render(rng) -> Scene` gives synthetic scenes.


MODALITIES: Registry[type] = Registry("modality")


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


def load_array_file(name: str, path: Path) -> np.ndarray:
    """Read a `.npy` / `.npz` (first array) / `.csv` / `.txt` numeric file safely."""
    suffix = path.suffix.lower()
    check_readable(name, path, (".npy", ".npz", ".csv", ".txt"))
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return z[z.files[0]]
        delim = "," if suffix == ".csv" else None
        return np.loadtxt(path, delimiter=delim, dtype=np.float32, ndmin=2)
    except (ValueError, OSError, IndexError, EOFError) as e:
        raise InputError(
            f"{name}: expected a numeric array file, got unreadable {str(path)!r}: {e}"
        ) from e
