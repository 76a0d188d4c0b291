"""Depth (OneLLM's `rgbd`): an RGB image paired with its depth map drawn as RGB, T = 2 frames.

Raw forms: a pair `(rgb, depth)` or a dict `{"rgb": ..., "depth": ...}`. The depth map is
a path / PIL / (H, W) array of distances (min-max scaled to [0, 1] and repeated to 3
channels) or an already-coloured (H, W, 3) image. Both frames are CLIP-transformed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modalities.image import ClipPatchTokenizer, ImageModality, clip_transform, to_image_tensor
from onellm.data.draw import Scene, canvas, paint, shape_mask
from onellm.data.language import COLOURS, DISTANCES, SHAPES
from onellm.errors import InputError
from onellm.modality import MODALITIES, EncoderInfo, as_float_array


def split_pair(name: str, raw: Any, second: str) -> tuple[Any, Any]:
    """`(rgb, x)` or `{"rgb": .., second: ..}` -> (rgb, x)."""
    if isinstance(raw, dict) and {"rgb", second} <= set(raw):
        return raw["rgb"], raw[second]
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        return raw[0], raw[1]
    raise InputError(
        f"{name}: expected a pair (rgb, {second}) or a dict with keys 'rgb' and '{second}', "
        f"got {type(raw).__name__}"
    )


def depth_to_image(name: str, raw: Any) -> torch.Tensor:
    """A depth map -> (3, H, W) in [0, 1]: 2-D arrays are min-max scaled, images pass through."""
    if isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 2:
        d = as_float_array(name, raw, "a depth map (H, W)")
        span = float(d.max() - d.min())
        d = (d - d.min()) / span if span > 0 else np.zeros_like(d)
        return torch.from_numpy(d).unsqueeze(0).expand(3, -1, -1).contiguous()
    return to_image_tensor(name, raw)


class PairedMapModality(ImageModality):
    """An RGB image and a per-pixel map of the same scene: (2, 3, size, size)."""

    name = "depth"
    second = "depth"

    def input_shape(self) -> tuple[int | None, ...]:
        return (2, 3, self.size, self.size)

    def map_to_image(self, raw: Any) -> torch.Tensor:
        return depth_to_image(self.name, raw)

    def preprocess(self, raw: Any) -> torch.Tensor:
        rgb, other = split_pair(self.name, raw, self.second)
        frames = [to_image_tensor(self.name, rgb), self.map_to_image(other)]
        return torch.stack([clip_transform(f, self.size) for f in frames])

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return ClipPatchTokenizer()

    def render_map(
        self, rng: np.random.Generator, mask: np.ndarray, near: bool, size: int
    ) -> np.ndarray:
        """A depth map: a floor receding upwards (4 to 10) and the shape at 1.5 or 6."""
        depth = np.linspace(10.0, 4.0, size)[:, None].repeat(size, 1) + rng.normal(
            0, 0.05, (size, size)
        )
        depth[mask] = (1.5 if near else 6.0) + rng.uniform(-0.2, 0.2)
        return depth

    def render(self, rng: np.random.Generator) -> Scene:
        """A shape near (large, close) or far (small, distant): "a near circle"."""
        size = self.size or 64
        shape, colour, distance = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(DISTANCES)
        near = distance == "near"
        radius = size * (rng.uniform(0.26, 0.29) if near else rng.uniform(0.18, 0.21))
        cx, cy = size / 2 + rng.uniform(-4, 4, 2)
        mask = shape_mask(shape, size, cx, cy, radius)
        rgb = canvas(rng, size)
        paint(rgb, mask, colour, rng)
        return Scene(
            input={"rgb": rgb, self.second: self.render_map(rng, mask, near, size)},
            caption=f"a {distance} {shape}",
            qa=[("Is it near or far?", distance), ("What shape is it?", shape)],
            attrs={"shape": shape, "distance": distance},
        )


MODALITIES.register("depth", PairedMapModality, aliases=("rgbd",))
