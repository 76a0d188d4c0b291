"""Image: CLIP-normalised RGB at the encoder's size; tokens from CLIP's own patch embedding.

OneLLM's eval transform: resize the short side (bicubic), centre-crop, normalise with
CLIP's mean/std. The same helpers serve video, depth and normal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch import nn

from onellm.data.draw import Scene, canvas, paint, place_centre, shape_mask
from onellm.data.language import COLOURS, PLACES, SHAPES
from onellm.errors import ConfigError, InputError
from onellm.modality import MODALITIES, EncoderInfo, as_path, check_readable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(name: str, path: Any) -> Image.Image:
    """Open an image file as RGB, raising `InputError` for a missing or corrupt file."""
    p = check_readable(name, as_path(path))
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{name}: expected an image file, got unreadable {str(p)!r}: {e}") from e


def to_image_tensor(name: str, raw: Any) -> torch.Tensor:
    """Path / PIL / numpy (H, W, 3) or (3, H, W) / tensor -> float (3, H, W) in [0, 1].

    uint8 arrays are scaled by 1/255; float arrays must already be in [0, 1].
    """
    if as_path(raw) is not None:
        raw = load_image(name, raw)
    if isinstance(raw, Image.Image):
        return TF.to_dtype(TF.to_image(raw.convert("RGB")), torch.float32, scale=True)
    if isinstance(raw, np.ndarray):
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
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise InputError(f"{name}: expected uint8 or float pixels, got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: expected finite pixel values, got NaN or Inf")
    if x.min() < 0 or x.max() > 1:
        raise InputError(
            f"{name}: expected float pixels in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]"
        )
    return x


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


class ImageModality:
    """One RGB image, (3, size, size). `size` defaults to the encoder's image size."""

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

    def input_shape(self) -> tuple[int | None, ...]:
        return (3, self.size, self.size)

    def preprocess(self, raw: Any) -> torch.Tensor:
        return clip_transform(to_image_tensor(self.name, raw), self.size)

    def pixels(self, raw: Any) -> torch.Tensor:
        """The raw image as RGB (3, H, W) in [0, 1] at its own size (for SAM, masks)."""
        return to_image_tensor(self.name, raw)

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return ClipPatchTokenizer()

    def render(self, rng: np.random.Generator) -> Scene:
        """One shape of a colour at a place: "a red circle on the left"."""
        size = self.size or 64
        shape, colour, place = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(list(PLACES))
        img = canvas(rng, size)
        cx, cy = place_centre(rng, place, size)
        paint(img, shape_mask(shape, size, cx, cy, size * rng.uniform(0.22, 0.26)), colour, rng)
        return scene_of(img, shape, colour, place)


def scene_of(raw: Any, shape: str, colour: str, place: str) -> Scene:
    """The caption and questions of a one-shape scene (shared by image and fMRI)."""
    where = PLACES[place]
    return Scene(
        input=raw,
        caption=f"a {colour} {shape} {where}",
        qa=[("What colour is it?", colour), ("What shape is it?", shape), ("Where is it?", where)],
        attrs={"shape": shape, "colour": colour, "place": place},
    )


MODALITIES.register("image", ImageModality)
