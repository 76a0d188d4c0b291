"""Drawing for the shapes world: shape masks on a canvas, and the scene record renderers return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onellm.data.language import COLOURS, PLACES, SHAPES

RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
assert set(RGB) == set(COLOURS)
# where each place puts a shape's centre, as fractions of the canvas (x, y)
CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}


@dataclass
class Scene:
    """One synthetic sample: a raw input `model.chat` accepts, its caption, and Q/A pairs."""

    input: Any
    caption: str
    qa: list[tuple[str, str]] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """A boolean (size, size) mask of `shape` centred at pixel (cx, cy)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    if shape == "square":
        return (np.abs(x - cx) <= radius) & (np.abs(y - cy) <= radius)
    if shape == "triangle":  # apex up
        top, bottom = cy - radius, cy + radius * 0.8
        half = (y - top) / (bottom - top) * radius
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}")


def canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey, slightly noisy background (H, W, 3) uint8."""
    base = rng.integers(90, 140)
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def place_centre(rng: np.random.Generator, place: str, size: int) -> tuple[float, float]:
    fx, fy = CENTRES[place]
    jitter = rng.uniform(-0.05, 0.05, 2) * size
    return fx * size + jitter[0], fy * size + jitter[1]


def paint(
    img: np.ndarray, mask: np.ndarray, colour: str, rng: np.random.Generator, alpha: float = 1.0
) -> None:
    """Fill `mask` in `img` with `colour` (slightly varied), blended by `alpha`."""
    rgb = np.clip(np.array(RGB[colour]) + rng.integers(-15, 16, 3), 0, 255)
    img[mask] = (alpha * rgb + (1 - alpha) * img[mask]).astype(np.uint8)


def one_shape_scene(raw: Any, shape: str, colour: str, place: str) -> Scene:
    """The caption and questions of a one-shape scene (image's, and fMRI's of an image)."""
    where = PLACES[place]
    return Scene(
        input=raw,
        caption=f"a {colour} {shape} {where}",
        qa=[("What colour is it?", colour), ("What shape is it?", shape), ("Where is it?", where)],
        attrs={"shape": shape, "colour": colour, "place": place},
    )


def one_shape_captions() -> list[str]:
    """Every caption `one_shape_scene` can give."""
    return [f"a {c} {s} {p}" for c in COLOURS for s in SHAPES for p in PLACES.values()]
