"""What every modality that shows CLIP images shares (image, video, depth, normal and
plug-ins such as thermal): reading image files, OneLLM's CLIP transform, CLIP's own patch
embedding as the tokenizer, and a size bound to the encoder. A helper module, not a
modality: nothing here registers.

Image files are read by image_reader.py: only the formats onellm reads, sizes checked
from the header, large images reduced in 8 bits before they become float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from PIL import Image
from torch import nn

from onellm.data.draw import Scene, canvas, paint, shape_mask
from onellm.data.language import COLOURS, DISTANCES, SHAPES
from onellm.errors import ConfigError, InputError
from onellm.modalities.image_reader import ASPECT, open_image, pil_to_tensor, shrink
from onellm.modeling.media_limits import check_bytes
from onellm.modeling.modality import EncoderInfo, as_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_image_tensor(
    name: str, raw: Any, fit: int | None = None, max_side: int | None = None
) -> torch.Tensor:
    """Path / PIL / numpy (H, W, 3) or (3, H, W) / tensor -> float (3, H, W) in [0, 1].

    uint8 arrays are scaled by 1/255, uint16 by 1/65535; float arrays must already be in
    [0, 1]. A PIL image given in memory is taken as it stands (no EXIF rotation). Files
    and PIL images larger than needed are reduced first (`fit`, `max_side`: see
    image_reader.shrink); arrays and tensors keep their size, but with `fit` a side longer
    than 4 of the other is cropped to its middle, as a file's is.
    """
    if as_path(raw) is not None:
        raw = open_image(name, raw, fit, max_side)
    if isinstance(raw, Image.Image):
        return pil_to_tensor(shrink(raw, fit, max_side))
    if isinstance(raw, np.ndarray):
        if raw.dtype == np.uint16:
            raw = raw.astype(np.float32) / 65535.0
        raw = torch.from_numpy(np.ascontiguousarray(raw))
    if not isinstance(raw, torch.Tensor):
        raise InputError(
            f"{name}: expected a file path, PIL image, numpy array or tensor, got {type(raw).__name__}"
        )
    x = raw
    if x.dim() == 2:  # grey
        x = x.unsqueeze(0).expand(3, -1, -1)
    if x.dim() == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)  # HWC -> CHW
    if x.dim() != 3 or x.shape[0] not in (1, 3) or min(x.shape[1:]) == 0:
        raise InputError(
            f"{name}: expected an image of shape (H, W, 3), (3, H, W) or (H, W), got {tuple(raw.shape)}"
        )
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    h, w = x.shape[1:]
    if fit and max(h, w) > ASPECT * min(h, w):  # as image_reader.shrink crops a file
        keep = ASPECT * min(h, w)
        x = x[:, (h - keep) // 2 :][:, :keep] if h > w else x[:, :, (w - keep) // 2 :][..., :keep]
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise InputError(f"{name}: expected uint8, uint16 or float pixels, got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: expected finite pixel values, got NaN or Inf")
    if x.min() < 0 or x.max() > 1:
        raise InputError(
            f"{name}: expected float pixels in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]"
        )
    return x


def write_png(name: str, raw: Any, path: Path) -> Path:
    """A raw image (anything `to_image_tensor` takes) as an 8-bit RGB PNG at `path`."""
    x = (to_image_tensor(name, raw) * 255).round().to(torch.uint8)
    TF.to_pil_image(x).save(path)
    return path


def clip_transform(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> short side to `size` (bicubic), centre crop, CLIP-normalise."""
    x = TF.resize(x, [size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size]).clamp(0, 1)
    return TF.normalize(x, CLIP_MEAN, CLIP_STD)


class ClipPatchTokenizer(nn.Module):
    """(B, [T,] 3, H, W) -> (B, T, S, W) through the encoder's own patch embedding (no params)."""

    position_embedding = None  # use the encoder's

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(1)  # one frame
        b = x.shape[0]
        tokens = encoder.patch_embed(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(tokens, "(b t) s w -> b t s w", b=b)


class ClipImageInput:
    """The part of a modality that shows CLIP images of `size` (the encoder's by default)."""

    name = "image"

    def __init__(self, *, size: int | None = None) -> None:
        self.size = size

    def bind(self, encoder: EncoderInfo) -> None:
        """Take sizes left unset from the encoder (called once when the model is built)."""
        if self.size is None:
            self.size = encoder.image_size
        elif self.size != encoder.image_size:
            raise ConfigError(
                f"{self.name}: size {self.size} must equal the encoder's image_size {encoder.image_size}"
            )

    def image(self, raw: Any) -> torch.Tensor:
        """One raw image -> CLIP-transformed (3, size, size)."""
        return clip_transform(to_image_tensor(self.name, raw, fit=self.size), self.size)

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return ClipPatchTokenizer()


def split_pair(name: str, raw: Any, second: str) -> tuple[Any, Any]:
    """`(rgb, x)` or `{"rgb": .., second: ..}` -> (rgb, x) (depth's and normal's raw form)."""
    if isinstance(raw, dict) and {"rgb", second} <= set(raw):
        return raw["rgb"], raw[second]
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        return raw[0], raw[1]
    raise InputError(
        f"{name}: expected a pair (rgb, {second}) or a dict with keys 'rgb' and '{second}', "
        f"got {type(raw).__name__}"
    )


def exr_channels(name: str, p: Path) -> dict[str, np.ndarray]:
    """An OpenEXR file's channels by name (its pixels as arrays): depth and normal maps."""
    import OpenEXR  # 0.2 s to import, for .exr files alone

    try:
        head = OpenEXR.File(str(p), header_only=True).header()  # sizes before pixels
        (x0, y0), (x1, y1) = head["dataWindow"]
        size = (int(x1) - int(x0) + 1) * (int(y1) - int(y0) + 1) * 4 * len(head["channels"])
        check_bytes(name, size, f"{len(head['channels'])} channels as float32", repr(str(p)))
        return {k: np.asarray(c.pixels) for k, c in OpenEXR.File(str(p)).channels().items()}
    except (InputError, ConfigError):
        raise
    except (RuntimeError, OSError, ValueError) as e:
        raise InputError(f"{name}: expected an OpenEXR file, got unreadable {str(p)!r}: {e}") from e


class PairedMapInput(ClipImageInput):
    """An RGB image and a per-pixel map of the same scene (depth, normal): (2, 3, size,
    size), both CLIP-transformed. Subclasses say how the map becomes an image
    (`map_to_image`) and draw it for the shapes world (`render_map`)."""

    second = "map"

    def input_shape(self) -> tuple[int | None, ...]:
        return (2, 3, self.size, self.size)

    def map_to_image(self, raw: Any) -> torch.Tensor:
        raise NotImplementedError

    def preprocess(self, raw: Any) -> torch.Tensor:
        rgb, other = split_pair(self.name, raw, self.second)
        frames = [to_image_tensor(self.name, rgb, fit=self.size), self.map_to_image(other)]
        return torch.stack([clip_transform(f, self.size) for f in frames])

    def render_map(
        self, rng: np.random.Generator, mask: np.ndarray, near: bool, size: int
    ) -> np.ndarray:
        raise NotImplementedError

    def write_map(self, raw: Any, stem: Path) -> Path:
        """The map as the file its users have (a 16-bit depth PNG, an 8-bit normal PNG)."""
        raise NotImplementedError

    def write(self, raw: Any, stem: Path) -> dict[str, str]:
        """The pair as two files, `stem`_rgb.png and the map's -> the dict preprocess reads."""
        rgb, other = split_pair(self.name, raw, self.second)
        stem = Path(stem)
        rgb_path = write_png(self.name, rgb, stem.with_name(stem.name + "_rgb.png"))
        map_path = self.write_map(other, stem.with_name(f"{stem.name}_{self.second}"))
        return {"rgb": str(rgb_path), self.second: str(map_path)}

    def captions(self) -> list[str]:
        return [f"a {d} {s}" for d in DISTANCES for s in SHAPES]

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
