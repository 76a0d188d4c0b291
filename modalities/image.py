"""Image: CLIP-normalised RGB at the encoder's size; tokens from CLIP's own patch embedding.

OneLLM's eval transform: resize the short side (bicubic), centre-crop, normalise with
CLIP's mean/std (modalities/clip_image.py, which video, depth and normal share).
Files: png, jpg, bmp, gif (first frame), webp, tiff; EXIF orientation, palette, CMYK,
alpha and 16-bit grey handled there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from onellm.data.draw import (
    Scene,
    canvas,
    one_shape_captions,
    one_shape_scene,
    paint,
    place_centre,
    shape_mask,
)
from onellm.data.language import COLOURS, PLACES, SHAPES
from onellm.modalities.clip_image import ClipImageInput, to_image_tensor, write_png
from onellm.registry import MODALITIES

MASK_SIDE = 1024


class ImageModality(ClipImageInput):
    """One RGB image, (3, size, size). `size` defaults to the encoder's image size."""

    name = "image"
    upload = "image"  # the file a user uploads (serve: its part type and player)

    def input_shape(self) -> tuple[int | None, ...]:
        return (3, self.size, self.size)

    def preprocess(self, raw: Any) -> torch.Tensor:
        return self.image(raw)

    def pixels(self, raw: Any) -> torch.Tensor:
        """The raw image as RGB (3, H, W) in [0, 1] (for SAM, masks): at its own size up
        to `MASK_SIDE` on the long side, else reduced by an integer factor to that (SAM
        sees 1024 px at most, so its masks hold no more; a float copy of a 40 MP image
        would be 480 MB)."""
        return to_image_tensor(self.name, raw, max_side=MASK_SIDE)

    def render(self, rng: np.random.Generator) -> Scene:
        """One shape of a colour at a place: "a red circle on the left"."""
        size = self.size or 64
        shape, colour, place = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(list(PLACES))
        img = canvas(rng, size)
        cx, cy = place_centre(rng, place, size)
        paint(img, shape_mask(shape, size, cx, cy, size * rng.uniform(0.22, 0.26)), colour, rng)
        return one_shape_scene(img, shape, colour, place)

    def captions(self) -> list[str]:
        return one_shape_captions()

    def write(self, raw: Any, stem: Path) -> Path:
        """The image as an 8-bit RGB PNG."""
        return write_png(self.name, raw, Path(stem).with_suffix(".png"))


MODALITIES.register("image", ImageModality)
