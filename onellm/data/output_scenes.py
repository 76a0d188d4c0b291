"""Shapes-world tasks for the output experts (DESIGN.md): "segment the blue triangle" on an
image holding several shapes (target: that shape's mask), and "draw a green square"
(target: an image of it). Deterministic by (seed, split, index) like every scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np

from onellm.data.draw import RGB, canvas, paint, shape_mask
from onellm.data.language import COLOURS, SHAPES
from onellm.data.shapes import SPLITS


@dataclass
class TaskScene:
    prompt: str
    phrase: str  # what is named, as a caption: the decoders' text encoders read it
    answer: str  # the output tokens the model must emit
    image: np.ndarray | None  # the input image (seg), (H, W, 3) uint8
    mask: np.ndarray | None  # seg target, (H, W) bool
    target: np.ndarray | None  # gen target image, (H, W, 3) uint8
    attrs: dict
    # seg: every shape in the image as (phrase, mask), the named one among them; SAM's
    # pretraining prompts each of them (one image encoding, several masks)
    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)


def seg_scene(index: int, split: str = "train", seed: int = 0, size: int = 64) -> TaskScene:
    """2-3 shapes of different (colour, shape) pairs; the prompt names one of them."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 101])
    pairs = list(product(COLOURS, SHAPES))
    chosen = [pairs[i] for i in rng.choice(len(pairs), int(rng.integers(2, 4)), replace=False)]
    img = canvas(rng, size)
    cells = rng.permutation(4)[: len(chosen)]  # one quadrant each: no overlap
    masks = []
    for (colour, shape), cell in zip(chosen, cells, strict=True):
        r = rng.uniform(0.13, 0.2) * size
        cx = (0.25 + 0.5 * (cell % 2)) * size + rng.uniform(-0.05, 0.05) * size
        cy = (0.25 + 0.5 * (cell // 2)) * size + rng.uniform(-0.05, 0.05) * size
        m = shape_mask(shape, size, cx, cy, r)
        paint(img, m, colour, rng)
        masks.append(m)
    k = int(rng.integers(len(chosen)))
    colour, shape = chosen[k]
    parts = [(f"the {c} {s}", m) for (c, s), m in zip(chosen, masks, strict=True)]
    return TaskScene(
        f"segment the {colour} {shape}",
        f"the {colour} {shape}",
        "<seg>",
        img,
        masks[k],
        None,
        {"colour": colour, "shape": shape},
        parts,
    )


def gen_scene(
    index: int, split: str = "train", seed: int = 0, size: int = 32, tokens: int = 4
) -> TaskScene:
    """ "draw a {colour} {shape}": one centred shape on a plain grey ground."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 202])
    colour, shape = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
    img = np.full((size, size, 3), 120, dtype=np.uint8)
    m = shape_mask(shape, size, size / 2, size / 2, size * rng.uniform(0.28, 0.34))
    paint(img, m, colour, rng)
    return TaskScene(
        f"draw a {colour} {shape}",
        f"a {colour} {shape}",
        "<gen>" * tokens,
        None,
        None,
        img,
        {"colour": colour, "shape": shape},
    )


def point_in(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel of a (H, W) mask, as the (x, y) of its centre: SAM's point prompt."""
    ys, xs = np.nonzero(mask)
    k = int(rng.integers(len(xs)))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def dominant_colour(image: np.ndarray, background: float = 30.0) -> str | None:
    """The shapes-world colour nearest to the mean of pixels that differ from the ground
    (the image's border median); None if nothing stands out."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    ground = np.median(border, axis=0)
    fg = img[np.abs(img - ground).sum(-1) > background]
    if len(fg) < 0.02 * img.shape[0] * img.shape[1]:
        return None
    mean = fg.mean(0)
    return min(RGB, key=lambda c: float(np.square(np.array(RGB[c]) - mean).sum()))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def captions() -> list[str]:
    """Every prompt the two tasks give ("segment the red circle", "draw a red circle")."""
    return [
        p for c, s in product(COLOURS, SHAPES) for p in (f"segment the {c} {s}", f"draw a {c} {s}")
    ]
