"""Point cloud: (points, 6) xyz + rgb, tokenised PointNet-style in pure torch.

Preprocess: centre and scale xyz into the unit ball, rgb to [0, 1], sample or tile to
`points` rows. Tokens: furthest point sampling of `groups` centres, each centre's
`neighbours` nearest points, a 1x1 Conv2d over the 6 raw channels, max over neighbours,
then a learned positional embedding. OneLLM's code samples and groups on channels 3:6
(`coords="rgb"`), which its released weights expect; `coords="xyz"` groups in space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from onellm.data.draw import RGB, Scene
from onellm.data.language import COLOURS, SOLIDS
from onellm.errors import InputError
from onellm.modality import MODALITIES, EncoderInfo, as_float_array, as_path, load_array_file
from onellm.positions import sincos_1d, with_class_slot

_COORDS = {"xyz": slice(0, 3), "rgb": slice(3, 6)}


@torch.no_grad()
def furthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, 3) -> (B, n) indices, greedy farthest-first from index 0 (as pointnet2)."""
    b, count, _ = xyz.shape
    idx = torch.zeros(b, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, count), float("inf"), device=xyz.device, dtype=xyz.dtype)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(n):
        idx[:, i] = far
        d = (xyz - xyz[rows, far].unsqueeze(1)).square().sum(-1)
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1)
    return idx


class PointTokenizer(nn.Module):
    """(B, N, 6) -> (B, 1, groups, W)."""

    def __init__(self, *, width: int, groups: int, neighbours: int, coords: str) -> None:
        super().__init__()
        self.groups, self.neighbours, self.coords = groups, neighbours, _COORDS[coords]
        self.proj = nn.Conv2d(6, width, kernel_size=1)
        self.position_embedding = nn.Parameter(with_class_slot(sincos_1d(groups, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        p = x[..., self.coords].contiguous()
        centres = torch.gather(
            p, 1, furthest_point_sample(p, self.groups)[..., None].expand(-1, -1, 3)
        )
        near = torch.cdist(centres, p).topk(self.neighbours, dim=-1, largest=False).indices
        b, m, k = near.shape
        grouped = torch.gather(x, 1, near.reshape(b, m * k, 1).expand(-1, -1, x.shape[-1]))
        grouped = rearrange(grouped, "b (m k) c -> b c m k", m=m)
        return rearrange(self.proj(grouped).amax(-1), "b w m -> b 1 m w")


class PointModality:
    name = "point"

    def __init__(
        self, *, points: int = 8192, groups: int = 1024, neighbours: int = 32, coords: str = "rgb"
    ) -> None:
        if coords not in _COORDS:
            raise InputError(f"{self.name}: coords must be 'xyz' or 'rgb', got {coords!r}")
        if not neighbours <= points or not groups <= points:
            raise InputError(
                f"{self.name}: groups ({groups}) and neighbours ({neighbours}) must be <= points ({points})"
            )
        self.points, self.groups, self.neighbours, self.coords = points, groups, neighbours, coords

    def input_shape(self) -> tuple[int | None, ...]:
        return (self.points, 6)

    def preprocess(self, raw: Any) -> torch.Tensor:
        """An (N, 6) xyz+rgb array / tensor, or a .npy/.txt/.csv file of one."""
        path = as_path(raw)
        if path is not None:
            raw = load_array_file(self.name, path)
        x = as_float_array(self.name, raw, "an (N, 6) xyz+rgb array")
        if x.ndim != 2 or x.shape[1] != 6:
            raise InputError(f"{self.name}: expected an (N, 6) xyz+rgb array, got shape {x.shape}")
        xyz = x[:, :3] - x[:, :3].mean(0)
        radius = float(np.sqrt((xyz**2).sum(1)).max())
        xyz = xyz / radius if radius > 0 else xyz
        rgb = x[:, 3:] / 255.0 if x[:, 3:].max() > 1.0 else x[:, 3:]
        x = np.concatenate([xyz, rgb], axis=1)
        idx = np.linspace(0, len(x) - 1, self.points).round().astype(int)  # sample or tile
        return torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return PointTokenizer(
            width=encoder.width, groups=self.groups, neighbours=self.neighbours, coords=self.coords
        )

    def render(self, rng: np.random.Generator) -> Scene:
        """Coloured points on a sphere, cube, cylinder or cone: "a red sphere"."""
        solid, colour = rng.choice(SOLIDS), rng.choice(COLOURS)
        n = max(self.points, 512)
        xyz = surface(solid, n, rng) * rng.uniform(0.8, 1.2) + rng.normal(0, 0.01, (n, 3))
        xyz = xyz @ rotation_about_z(rng.uniform(0, 2 * np.pi)).T
        rgb = np.clip(np.array(RGB[colour]) + rng.normal(0, 10, (n, 3)), 0, 255)
        return Scene(
            input=np.concatenate([xyz, rgb], 1).astype(np.float32),
            caption=f"a {colour} {solid}",
            qa=[("What shape is it?", solid), ("What colour is it?", colour)],
            attrs={"solid": solid, "colour": colour},
        )


def rotation_about_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def surface(solid: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points on the surface of a unit-sized `solid`, (n, 3)."""
    if solid == "sphere":
        v = rng.normal(size=(n, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if solid == "cube":
        p = rng.uniform(-1, 1, (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)
        return p
    theta = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(-1, 1, n)
    r = np.ones(n) if solid == "cylinder" else (1 - z) / 2  # cone: apex at z = 1
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)


MODALITIES.register("point", PointModality)
