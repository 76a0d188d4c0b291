"""Depth (OneLLM's `rgbd`): an RGB image paired with its depth map drawn as RGB, T = 2 frames.

Raw forms: a pair `(rgb, depth)` or a dict `{"rgb": ..., "depth": ...}` of paths or arrays
(from the CLI: `--input rgb.png --input depth.png` or `--input rgb=a.png,depth=b.png`).
The depth map, in metric scale:
- a 16-bit PNG / TIFF: integer depth in units of `1 / depth_scale` metres (1000: the
  millimetres of Kinect, NYU and ScanNet files), read with PIL at full precision;
- a .npy (H, W) array or an .exr (OpenEXR; its Z, then Y, R or depth channel) in metres;
- an (H, W) array or tensor of distances.
Zeros and non-finite values in a file are missing readings: they become the farthest
valid depth. The metric map is then min-max scaled to [0, 1] per map (near dark, far
light) and repeated to 3 channels. An 8-bit image (file, PIL, (H, W, 3) array) is taken
as an already coloured depth image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from onellm.errors import ConfigError, InputError
from onellm.modalities.clip_image import PairedMapInput, exr_channels, to_image_tensor, write_png
from onellm.modalities.image_reader import fit_array, open_image
from onellm.modeling.media_limits import read_npy
from onellm.modeling.modality import as_float_array, as_path, check_readable
from onellm.registry import MODALITIES

DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".exr", ".jpg", ".jpeg", ".bmp", ".webp")


def read_depth(
    name: str, path: Path, depth_scale: float = 1000.0, fit: int | None = None
) -> np.ndarray | Image.Image:
    """A depth file -> (H, W) float32 metres, or an 8-bit image taken as coloured depth
    (`fit`: the size the map is resized to; a large image file is reduced towards it)."""
    p = check_readable(name, path, DEPTH_SUFFIXES)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            d = read_npy(name, p)  # its header checked against ONELLM_MAX_ARRAY_MB first
        except (InputError, ConfigError):  # a bad limit setting, too
            raise
        except (ValueError, OSError, EOFError) as e:
            raise InputError(
                f"{name}: expected a .npy depth array, got unreadable {str(p)!r}: {e}"
            ) from e
        d = fit_array(np.squeeze(d), fit)  # a large map made small before the work below
    elif suffix == ".exr":
        d = fit_array(_read_exr(name, p), fit)
    else:
        im = open_image(name, p, fit)
        if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            return im  # 8-bit: a depth image already coloured
        d = np.asarray(im, dtype=np.float32) / (1.0 if im.mode == "F" else depth_scale)
    if d.ndim != 2 or min(d.shape) == 0:
        raise InputError(f"{name}: expected a depth map (H, W) in {str(p)!r}, got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.number):
        raise InputError(f"{name}: expected numeric depth in {str(p)!r}, got dtype {d.dtype}")
    d = d.astype(np.float32)
    missing = ~np.isfinite(d) | (d <= 0)
    if missing.all():
        raise InputError(f"{name}: expected some valid (> 0, finite) depth in {str(p)!r}, got none")
    d[missing] = d[~missing].max()
    return d


def _read_exr(name: str, p: Path) -> np.ndarray:
    channels = exr_channels(name, p)
    for key in ("Z", "Y", "R", "depth", "Z.Z", "depth.Z"):
        if key in channels:
            return channels[key]
    raise InputError(
        f"{name}: expected a Z, Y, R or depth channel in {str(p)!r}, got {sorted(channels)}"
    )


def depth_to_image(
    name: str, raw: Any, depth_scale: float = 1000.0, fit: int | None = None
) -> torch.Tensor:
    """A depth map -> (3, H, W) in [0, 1]: metric maps are min-max scaled, images pass through."""
    if as_path(raw) is not None:
        raw = read_depth(name, as_path(raw), depth_scale, fit)
    if isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 2:
        d = as_float_array(name, fit_array(np.asarray(raw), fit), "a depth map (H, W)")
        span = float(d.max() - d.min())
        d = (d - d.min()) / span if span > 0 else np.zeros_like(d)
        return torch.from_numpy(d).unsqueeze(0).expand(3, -1, -1).contiguous()
    return to_image_tensor(name, raw, fit)


class DepthModality(PairedMapInput):
    """RGB + depth: (2, 3, size, size). `depth_scale`: integer depth files' units per metre."""

    name = "depth"
    second = "depth"

    def __init__(self, *, size: int | None = None, depth_scale: float = 1000.0) -> None:
        super().__init__(size=size)
        self.depth_scale = depth_scale

    def map_to_image(self, raw: Any) -> torch.Tensor:
        return depth_to_image(self.name, raw, self.depth_scale, self.size)

    def write_map(self, raw: Any, stem: Path) -> Path:
        """Metric depth as a 16-bit PNG in units of 1 / depth_scale m (millimetres), as
        Kinect, NYU and ScanNet write it; an 8-bit depth image as an 8-bit PNG."""
        path = Path(stem).with_suffix(".png")
        if isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 2:
            d = as_float_array(self.name, raw, "a depth map (H, W)") * self.depth_scale
            Image.fromarray(np.clip(np.round(d), 0, 65535).astype(np.uint16)).save(path)
            return path
        return write_png(self.name, raw, path)

    def render_map(
        self, rng: np.random.Generator, mask: np.ndarray, near: bool, size: int
    ) -> np.ndarray:
        """A depth map: a floor receding upwards (4 to 10) and the shape at 1.5 or 6."""
        depth = np.linspace(10.0, 4.0, size)[:, None].repeat(size, 1) + rng.normal(
            0, 0.05, (size, size)
        )
        depth[mask] = (1.5 if near else 6.0) + rng.uniform(-0.2, 0.2)
        return depth


MODALITIES.register("depth", DepthModality, aliases=("rgbd",))
