"""Surface normals (OneLLM's `rgbn`): an RGB image paired with its normal map, T = 2 frames.

Raw forms as for depth: `(rgb, normal)` or `{"rgb": ..., "normal": ...}`. A float
(H, W, 3) normal map with components in [-1, 1] (an array, a .npy, or an .exr's R, G, B
channels) is mapped to colours by (n + 1) / 2; an 8-bit image (png, jpg, ...; file, PIL,
uint8 array) is taken as already coloured, the usual (n + 1) / 2 * 255 encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from onellm.errors import InputError
from onellm.modalities.clip_image import PairedMapInput, exr_channels, to_image_tensor, write_png
from onellm.modalities.image_reader import fit_array
from onellm.modeling.modality import as_float_array, as_path, load_array_file
from onellm.registry import MODALITIES


class NormalModality(PairedMapInput):
    """RGB + surface normals: (2, 3, size, size)."""

    name = "normal"
    second = "normal"

    def render_map(
        self, rng: np.random.Generator, mask: np.ndarray, near: bool, size: int
    ) -> np.ndarray:
        """Surface normals in [-1, 1]: the floor faces up, the shape bulges towards the camera."""
        n = np.zeros((size, size, 3), dtype=np.float32)
        n[..., 1] = -0.9  # floor
        n[..., 2] = 0.43
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean(), xs.mean()
        extent = max(ys.max() - ys.min(), xs.max() - xs.min(), 1) / 2
        bx, by = (xs - cx) / extent * 0.8, (ys - cy) / extent * 0.8
        bz = np.sqrt(np.clip(1 - bx**2 - by**2, 0.05, 1))
        n[ys, xs] = np.stack([bx, by, bz], 1) / np.linalg.norm(
            np.stack([bx, by, bz], 1), axis=1, keepdims=True
        )
        return np.clip(n + rng.normal(0, 0.02, n.shape), -1, 1)

    def write_map(self, raw: Any, stem: Path) -> Path:
        """Normals as the usual 8-bit PNG, (n + 1) / 2 * 255 per component."""
        x = self.map_to_image(raw)  # (3, H, W) in [0, 1]
        return write_png(self.name, x, Path(stem).with_suffix(".png"))

    def map_to_image(self, raw: Any) -> torch.Tensor:
        path = as_path(raw)
        if path is not None and path.suffix.lower() in (".npy", ".npz", ".exr"):
            raw = fit_array(read_normals(self.name, path), self.size)
        is_float = isinstance(raw, (np.ndarray, torch.Tensor)) and raw.dtype not in (
            np.uint8,
            torch.uint8,
        )
        if is_float and raw.ndim == 3 and raw.shape[-1] == 3:
            n = as_float_array(self.name, raw, "a normal map (H, W, 3)")
            raw = np.clip((n + 1.0) / 2.0, 0.0, 1.0)
        return to_image_tensor(self.name, raw, fit=self.size)


def read_normals(name: str, path) -> np.ndarray:
    """A float normal-map file (.npy, .exr) -> (H, W, 3) float32 components."""
    if path.suffix.lower() == ".exr":
        ch = exr_channels(name, path)
        if "RGB" in ch:  # OpenEXR 3 groups R, G, B into one (H, W, 3) channel
            return np.asarray(ch["RGB"], dtype=np.float32)
        if not {"R", "G", "B"} <= set(ch):
            raise InputError(
                f"{name}: expected R, G and B channels in {str(path)!r}, got {sorted(ch)}"
            )
        return np.stack([ch[k] for k in "RGB"], -1).astype(np.float32)
    return load_array_file(name, path)


MODALITIES.register("normal", NormalModality, aliases=("rgbn",))
