"""fMRI: one voxel vector per scan, (1, voxels) (OneLLM's NSD loader: 15724 voxels).

Raw forms:
- a voxel vector (voxels,) or (1, voxels), or (repeats, voxels): the scans of one
  stimulus, averaged over repeats as OneLLM's loader does (`data.mean(axis=0)`: its NSD
  files hold 3 repeats); as an array / tensor or a `.npy` / `.npz` / `.pt` / `.txt` file;
- a NIfTI volume (`.nii` / `.nii.gz`, read by nibabel with its scaling applied): 3-D
  (X, Y, Z), or 4-D (X, Y, Z, R) whose last axis is averaged as repeats; its voxels are
  picked by a mask of the same (X, Y, Z) (a NIfTI or `.npy`; nonzero = kept, in C order):
  the modality's `mask:` option, or per input as `{"scan": "a.nii.gz", "mask": "m.nii.gz"}`.
  A volume whose header promises more than `ONELLM_MAX_ARRAY_MB` of float32 is refused
  from the header, before it is read (onellm/modeling/media_limits.py).

Tokens: a Linear to `tokens` x W, read channel-major as OneLLM does (token t takes
channel c from output c * tokens + t), plus a learned positional embedding.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import torch
from einops import rearrange
from torch import nn

from onellm.data.draw import Scene, one_shape_captions, one_shape_scene
from onellm.data.language import COLOURS, PLACES, SHAPES
from onellm.errors import ConfigError, InputError
from onellm.modeling.media_limits import check_bytes
from onellm.modeling.modality import (
    EncoderInfo,
    as_float_array,
    as_path,
    check_readable,
    load_array_file,
)
from onellm.modeling.positions import sincos_1d, with_class_slot
from onellm.registry import MODALITIES

NIFTI_SUFFIXES = (".nii", ".gz")
VECTOR = "a voxel vector (voxels,) or (repeats, voxels)"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_nifti(name: str, path: Path) -> np.ndarray:
    """A NIfTI file -> its float32 data, (X, Y, Z) or (X, Y, Z, R), scaling applied."""
    p = check_readable(name, path, NIFTI_SUFFIXES)
    try:
        img = nibabel.load(p)  # the header alone: the data is read by get_fdata
        size = int(np.prod(img.shape, dtype=object)) * 4
        check_bytes(name, size, f"a NIfTI volume of shape {img.shape} as float32", repr(str(p)))
        return np.asarray(img.get_fdata(dtype=np.float32))
    except (InputError, ConfigError):  # a bad limit setting, too
        raise
    except (nibabel.filebasedimages.ImageFileError, ValueError, OSError, EOFError, zlib.error) as e:
        raise InputError(
            f"{name}: expected a NIfTI (.nii / .nii.gz) file, got unreadable {str(p)!r}: {e}"
        ) from e


@lru_cache(maxsize=8)
def read_mask(name: str, path: Path) -> np.ndarray:
    """A voxel mask file (NIfTI or .npy) -> boolean (X, Y, Z); read once per path."""
    m = read_nifti(name, path) if is_nifti(path) else load_array_file(name, path)
    return np.asarray(m) != 0


class FMRITokenizer(nn.Module):
    """(B, 1, F) or (B, F) -> (B, 1, tokens, W)."""

    def __init__(self, *, width: int, voxels: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(voxels, tokens * width)
        self.position_embedding = nn.Parameter(with_class_slot(sincos_1d(tokens, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        y = self.proj(x.reshape(x.shape[0], -1))
        return rearrange(y, "b (w t) -> b 1 t w", t=self.tokens)  # channel-major, as OneLLM


class FMRIModality:
    name = "fmri"

    def __init__(self, *, voxels: int = 15724, tokens: int = 8, mask: str | None = None) -> None:
        self.voxels, self.tokens, self.mask = voxels, tokens, mask

    def input_shape(self) -> tuple[int | None, ...]:
        return (1, self.voxels)

    def preprocess(self, raw: Any) -> torch.Tensor:
        """A scan (see the module docstring) -> (1, voxels), repeats averaged."""
        mask = self.mask
        if isinstance(raw, dict):
            if set(raw) != {"scan", "mask"}:
                raise InputError(
                    f"{self.name}: expected a dict with keys 'scan' and 'mask', got {sorted(raw)}"
                )
            raw, mask = raw["scan"], raw["mask"]
        path = as_path(raw)
        if path is not None and is_nifti(path):
            x = self.masked(read_nifti(self.name, path), mask)
        else:
            if path is not None:
                raw = load_array_file(self.name, path)
            x = as_float_array(self.name, raw, VECTOR)
            x = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        if x.shape[-1] != self.voxels:
            raise InputError(f"{self.name}: expected {self.voxels} voxels, got shape {x.shape}")
        return torch.from_numpy(x.mean(axis=0, dtype=np.float32)).unsqueeze(0)

    def masked(self, volume: np.ndarray, mask: Any) -> np.ndarray:
        """(X, Y, Z[, R]) -> (R, voxels): the masked voxels of each repeat."""
        if volume.ndim not in (3, 4):
            raise InputError(
                f"{self.name}: expected a 3-D or 4-D NIfTI volume, got shape {volume.shape}"
            )
        if mask is None:
            raise InputError(
                f"{self.name}: expected a voxel mask for a {volume.shape} volume (the modality's "
                "mask: option, or {'scan': ..., 'mask': ...}), got none"
            )
        m = read_mask(self.name, Path(mask))
        if m.shape != volume.shape[:3]:
            raise InputError(
                f"{self.name}: expected a mask of shape {volume.shape[:3]}, got {m.shape}"
            )
        repeats = volume.reshape(*volume.shape[:3], -1)
        return np.ascontiguousarray(repeats[m].T)  # (R, voxels)

    def write(self, raw: Any, stem: Path) -> Path:
        """A voxel vector as a NIfTI volume + its mask (`stem`.nii.gz, `stem`_mask.nii.gz)
        -> the dict of both paths that preprocess reads."""
        x = self.preprocess(raw)[0].numpy()
        side = int(np.ceil(len(x) ** (1 / 3)))
        mask = np.zeros(side**3, dtype=np.uint8)
        mask[: len(x)] = 1
        volume = np.zeros(side**3, dtype=np.float32)
        volume[: len(x)] = x
        stem = Path(stem)
        scan, where = (
            stem.with_name(stem.name + ".nii.gz"),
            stem.with_name(stem.name + "_mask.nii.gz"),
        )
        for data, p in ((volume, scan), (mask, where)):
            nibabel.save(nibabel.Nifti1Image(data.reshape(side, side, side), np.eye(4)), p)
        return {"scan": str(scan), "mask": str(where)}

    def captions(self) -> list[str]:
        return one_shape_captions()

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return FMRITokenizer(width=encoder.width, voxels=self.voxels, tokens=self.tokens)

    def render(self, rng: np.random.Generator) -> Scene:
        """A voxel response to an image scene: a fixed random mixing of the scene's
        attributes (one-hot colour, shape, place) plus noise; captioned as that scene."""
        shape, colour, place = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(list(PLACES))
        code = np.zeros(len(COLOURS) + len(SHAPES) + len(PLACES), dtype=np.float32)
        code[
            [
                COLOURS.index(colour),
                len(COLOURS) + SHAPES.index(shape),
                len(COLOURS) + len(SHAPES) + list(PLACES).index(place),
            ]
        ] = 1
        mixing = (
            np.random.default_rng(1234).normal(0, 1, (self.voxels, code.size)).astype(np.float32)
        )
        voxels = mixing @ code + rng.normal(0, 0.3, self.voxels).astype(np.float32)
        return one_shape_scene(voxels, shape, colour, place)


MODALITIES.register("fmri", FMRIModality)
