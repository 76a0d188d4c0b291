"""Thermal camera: a modality written outside the onellm package, as a plug-in.

Everything a modality needs lives in this one file: how raw input becomes a tensor
(`preprocess`), its tokenizer (a patch convolution into the universal encoder's width,
with its own positional embedding), a synthetic renderer for the shapes world, and the
one call that registers it (`MODALITIES.register("thermal", ThermalModality)`).

Raw forms: a 2-D array / tensor of temperatures in degrees Celsius (any size; resized),
or a .npy / .csv / .txt file of one. Synthetic scenes: a warm body (circle, square or
triangle) in front of a cool room; near bodies fill the frame, far ones are small:
"a near circle", "a far triangle".

Found from YAML as `type: examples/thermal/onellm_thermal.py` (a file), or as `thermal`
once installed (`pip install -e examples/thermal`: its pyproject declares the entry point).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from onellm.data.draw import Scene, shape_mask
from onellm.data.language import DISTANCES, SHAPES
from onellm.errors import InputError
from onellm.modeling.modality import EncoderInfo, as_float_array, as_path, load_array_file
from onellm.modeling.positions import sincos_2d, with_class_slot
from onellm.registry import MODALITIES

ROOM_C, SCALE_C = 25.0, 10.0  # temperatures are fed as (t - 25 C) / 10 C


class ThermalTokenizer(nn.Module):
    """(B, 1, H, W) -> (B, 1, (H/p)(W/p), W_enc): patch convolution + learned positions."""

    def __init__(self, *, width: int, size: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch, stride=patch)
        grid = size // patch
        self.position_embedding = nn.Parameter(with_class_slot(sincos_2d(grid, grid, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        return rearrange(self.proj(x), "b w gh gw -> b 1 (gh gw) w")


class ThermalModality:
    name = "thermal"

    def __init__(self, *, size: int = 32, patch: int = 8) -> None:
        if size % patch:
            raise InputError(f"{self.name}: size {size} must be a multiple of patch {patch}")
        self.size, self.patch = size, patch

    def input_shape(self) -> tuple[int | None, ...]:
        return (1, self.size, self.size)

    def preprocess(self, raw: Any) -> torch.Tensor:
        path = as_path(raw)
        if path is not None:
            raw = load_array_file(self.name, path)
        t = as_float_array(self.name, raw, "a (H, W) array of temperatures in Celsius")
        if t.ndim == 3 and 1 in (t.shape[0], t.shape[-1]):
            t = t.reshape(t.shape[1:] if t.shape[0] == 1 else t.shape[:2])  # (1, H, W) / (H, W, 1)
        if t.ndim != 2 or min(t.shape) < 2:
            raise InputError(
                f"{self.name}: expected a (H, W) array of temperatures, got shape {t.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(t))[None, None]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return (x[0] - ROOM_C) / SCALE_C

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return ThermalTokenizer(width=encoder.width, size=self.size, patch=self.patch)

    def captions(self) -> list[str]:
        """Every caption `render` gives (a tiny text tokenizer learns these words)."""
        return [f"a {d} {s}" for d in DISTANCES for s in SHAPES]

    def write(self, raw: Any, stem: Path) -> Path:
        """Temperatures as the .npy a camera SDK or `np.save` writes."""
        path = Path(stem).with_suffix(".npy")
        np.save(path, as_float_array(self.name, raw, "a (H, W) array of temperatures"))
        return path

    def render(self, rng: np.random.Generator) -> Scene:
        shape, distance = rng.choice(SHAPES), rng.choice(DISTANCES)
        n = 64  # rendered at 64 px, resized by preprocess like any real frame
        radius = n * (rng.uniform(0.30, 0.38) if distance == "near" else rng.uniform(0.12, 0.17))
        cx, cy = (rng.uniform(radius, n - radius) for _ in range(2))
        room = rng.uniform(18, 23) + rng.normal(0, 0.4, (n, n))
        body = rng.uniform(32, 37)
        t = np.where(shape_mask(shape, n, cx, cy, radius), body + rng.normal(0, 0.3, (n, n)), room)
        return Scene(
            input=t.astype(np.float32),
            caption=f"a {distance} {shape}",
            qa=[("What shape is warm?", shape), ("Is it near or far?", distance)],
            attrs={"shape": shape, "distance": distance},
        )


MODALITIES.register("thermal", ThermalModality)
