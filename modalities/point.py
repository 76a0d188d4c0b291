"""Point cloud: (points, 6) xyz + rgb, tokenised PointNet-style in pure torch.

Raw forms (each (N, 3) xyz or (N, 6) xyz + rgb; rgb in [0, 1] or 0-255):
- an array or tensor, (N, C) or transposed (C, N) when that is unambiguous (exactly one
  side is 3 or 6: OneLLM's own `.pt` files hold (6, N));
- `.npy` / `.npz` (first array) / `.txt` / `.csv` / `.xyz` arrays, `.pt` tensors
  (`torch.load(weights_only=True)`), `.ply` (plyfile: vertex x, y, z and red, green, blue
  when present) and `.pcd` (pypcd4: ASCII, binary and compressed; x, y, z and a packed
  rgb/rgba or r, g, b fields).

An xyz-only cloud gets its colour filled (`xyz_colour`): "grey" (0.5, the middle of the
reference's [0, 1] colours) or "position" ((xyz + 1) / 2 after normalising). The default,
"auto", is "position" when the tokenizer groups on the colour channels (`coords="rgb"`,
as OneLLM's released weights do: a constant colour would put every point at the same
place in the grouping space, so all groups would be one) and "grey" otherwise.

Preprocess, as OneLLM's `pc_norm`: centre xyz and scale it into the unit ball; then
sample or tile to `points` rows. Tokens: furthest point sampling of `groups` centres, each
centre's `neighbours` nearest points, a 1x1 Conv2d over the 6 raw channels, max over
neighbours, then a learned positional embedding. OneLLM's code samples and groups on
channels 3:6 (`coords="rgb"`), which its released weights expect; `coords="xyz"` groups
in space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plyfile
import torch
from einops import rearrange
from pypcd4 import MetaData, PointCloud
from torch import nn

from onellm.data.draw import RGB, Scene
from onellm.data.language import COLOURS, SOLIDS
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

_COORDS = {"xyz": slice(0, 3), "rgb": slice(3, 6)}
XYZ_COLOURS = ("auto", "grey", "position")
ARRAY_SUFFIXES = (".npy", ".npz", ".txt", ".csv", ".xyz", ".pt")
POINT_SUFFIXES = (*ARRAY_SUFFIXES, ".ply", ".pcd")
CLOUD = "an (N, 3) xyz or (N, 6) xyz+rgb point cloud"


def read_points(name: str, path: Path) -> np.ndarray:
    """A point-cloud file -> its (N, 3) or (N, 6) array (or (C, N), as stored)."""
    p = check_readable(name, path, POINT_SUFFIXES)
    suffix = p.suffix.lower()
    if suffix in ARRAY_SUFFIXES:  # .xyz: whitespace-separated text, as .txt
        return load_array_file(name, p, ARRAY_SUFFIXES)
    try:
        return _read_ply(name, p) if suffix == ".ply" else _read_pcd(name, p)
    except (InputError, ConfigError):  # a bad limit setting, too
        raise
    except (plyfile.PlyParseError, ValueError, KeyError, OSError, EOFError, IndexError) as e:
        # pydantic's ValidationError (a bad .pcd header) is a ValueError
        what = "a .ply" if suffix == ".ply" else "a .pcd"
        raise InputError(
            f"{name}: expected {what} point cloud, got unreadable {str(p)!r}: {e}"
        ) from e


def _read_ply(name: str, p: Path) -> np.ndarray:
    with open(p, "rb") as f:  # the header's element counts first, by plyfile's own parser
        for element in plyfile.PlyData._parse_header(f):
            size = element.count * element.dtype().itemsize
            check_bytes(name, size, f"{element.count:,} {element.name} rows", repr(str(p)))
    ply = plyfile.PlyData.read(str(p))
    if "vertex" not in ply:
        raise InputError(
            f"{name}: expected a 'vertex' element in {str(p)!r}, got {[e.name for e in ply.elements]}"
        )
    v = ply["vertex"].data
    return _columns(name, p, v, v.dtype.names, ("red", "green", "blue"))


def _read_pcd(name: str, p: Path) -> np.ndarray:
    check_pcd(name, p)
    pc = PointCloud.from_path(p)
    fields = tuple(pc.fields)
    packed = next((f for f in ("rgb", "rgba") if f in fields), None)
    if packed is None:
        return _columns(name, p, pc.pc_data, fields, ("r", "g", "b"))
    xyz = _columns(name, p, pc.pc_data, fields, ())
    rgb = PointCloud.decode_rgb(pc.pc_data[packed]).astype(np.float32)
    return np.concatenate([xyz, rgb], axis=1)


def check_pcd(name: str, p: Path) -> None:
    """A .pcd's header (its points x their size) and, when compressed, the size its data
    says it inflates to, against ONELLM_MAX_ARRAY_MB, before pypcd4 reads or inflates."""
    lines = []
    with open(p, "rb") as f:
        for raw in f:  # as pypcd4's from_fileobj reads the header
            line = raw.decode("utf-8", errors="replace").strip()
            if line and not line.startswith("#"):
                lines.append(line)
            if line.startswith("DATA") or len(lines) >= 10:
                break
        meta = MetaData.parse_header(lines)
        size = meta.points * meta.build_dtype().itemsize
        check_bytes(name, size, f"{meta.points:,} points", repr(str(p)))
        if meta.data == "binary_compressed":
            sizes = f.read(8)
            inflated = int.from_bytes(sizes[4:8], "little") if len(sizes) == 8 else 0
            check_bytes(name, inflated, "its compressed data inflated", repr(str(p)))


def _columns(name: str, p: Path, data, fields, colour: tuple[str, ...]) -> np.ndarray:
    """x, y, z (and the colour fields, when all are there) of a structured array -> (N, C)."""
    if not {"x", "y", "z"} <= set(fields):
        raise InputError(f"{name}: expected x, y and z fields in {str(p)!r}, got {list(fields)}")
    keep = ["x", "y", "z", *(colour if colour and set(colour) <= set(fields) else ())]
    return np.stack([np.asarray(data[f], dtype=np.float32) for f in keep], axis=1)


def as_cloud(name: str, x: np.ndarray) -> np.ndarray:
    """(N, C) or (C, N) with C in (3, 6) -> (N, C); anything else an `InputError`."""
    widths = (3, 6)
    if x.ndim != 2 or not (x.shape[0] in widths or x.shape[1] in widths):
        raise InputError(f"{name}: expected {CLOUD}, got shape {x.shape}")
    if x.shape[1] in widths and x.shape[0] in widths:  # (6, 6), (3, 6), ...: either way round
        raise InputError(
            f"{name}: expected {CLOUD} of more than 6 points, got shape {x.shape}, "
            "which reads as points either way round"
        )
    return x if x.shape[1] in widths else x.T


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
        self,
        *,
        points: int = 8192,
        groups: int = 1024,
        neighbours: int = 32,
        coords: str = "rgb",
        xyz_colour: str = "auto",
    ) -> None:
        if coords not in _COORDS:
            raise InputError(f"{self.name}: coords must be 'xyz' or 'rgb', got {coords!r}")
        if xyz_colour not in XYZ_COLOURS:
            raise InputError(
                f"{self.name}: xyz_colour must be one of {XYZ_COLOURS}, got {xyz_colour!r}"
            )
        if not neighbours <= points or not groups <= points:
            raise InputError(
                f"{self.name}: groups ({groups}) and neighbours ({neighbours}) must be <= points ({points})"
            )
        self.points, self.groups, self.neighbours, self.coords = points, groups, neighbours, coords
        self.xyz_colour = xyz_colour
        if xyz_colour == "auto":
            self.xyz_colour = "position" if coords == "rgb" else "grey"

    def input_shape(self) -> tuple[int | None, ...]:
        return (self.points, 6)

    def preprocess(self, raw: Any) -> torch.Tensor:
        """A point cloud (see the module docstring for the forms) -> (points, 6)."""
        path = as_path(raw)
        if path is not None:
            raw = read_points(self.name, path)
        x = as_cloud(self.name, as_float_array(self.name, raw, CLOUD))
        xyz = x[:, :3] - x[:, :3].mean(0)
        radius = float(np.sqrt((xyz**2).sum(1)).max())
        xyz = xyz / radius if radius > 0 else xyz
        if x.shape[1] == 6:
            rgb = x[:, 3:] / 255.0 if x[:, 3:].max() > 1.0 else x[:, 3:]
        elif self.xyz_colour == "grey":
            rgb = np.full_like(xyz, 0.5)
        else:
            rgb = (xyz + 1.0) / 2.0
        x = np.concatenate([xyz, rgb], axis=1)
        idx = np.linspace(0, len(x) - 1, self.points).round().astype(int)  # sample or tile
        return torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return PointTokenizer(
            width=encoder.width, groups=self.groups, neighbours=self.neighbours, coords=self.coords
        )

    def write(self, raw: Any, stem: Path) -> Path:
        """An (N, 6) cloud (rgb 0-255) as the binary .ply a scanner or Blender writes."""
        x = as_cloud(self.name, as_float_array(self.name, raw, CLOUD))
        names = ("x", "y", "z", "red", "green", "blue")[: x.shape[1]]
        rows = np.empty(len(x), dtype=[(n, "f4" if n in "xyz" else "u1") for n in names])
        rgb = x[:, 3:] * 255.0 if x.shape[1] == 6 and x[:, 3:].max() <= 1.0 else x[:, 3:]
        for i, n in enumerate(names):
            rows[n] = np.clip(np.round(rgb[:, i - 3]), 0, 255) if i >= 3 else x[:, i]
        path = Path(stem).with_suffix(".ply")
        plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")]).write(str(path))
        return path

    def captions(self) -> list[str]:
        return [f"a {c} {s}" for c in COLOURS for s in SOLIDS]

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
