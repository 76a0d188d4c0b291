"""Shapes-world scenes for spatial questions (the projection and MoAI study, docs/moai.md).

2-4 shapes of distinct (colour, shape), one in each of some cells of a 2 x 2 grid, and
questions of four kinds, as MoAI's gains are on real-world scene understanding:

    existence  "Is there a red circle?"            -> "yes" / "no"  (half of them absent)
    position   "Where is the red circle?"          -> "top left", "bottom right", ...
    relation   "What is left of the blue square?"  -> "the red circle" (left / right of,
                                                     above / below: asked where one is)
    count      "How many circles?"                 -> "none", "one", ... "four"

Deterministic by (seed, split, index), like every shapes-world scene.

A question can carry a description of its scene in front of it (`with_words`): the words
MoAI's auxiliary sources say about the image, read by the aux-as-text baseline and by the
tiny LLM's language pretraining (onellm/tasks/sceneqa.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from onellm.data.draw import canvas, paint, shape_mask
from onellm.data.language import COLOURS, SHAPES
from onellm.data.shapes import SPLITS

KINDS = ("existence", "position", "relation", "count")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # row-major over the grid
NUMBERS = ("none", "one", "two", "three", "four")
# relation -> (row step, column step) from the named shape to the answer
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


@dataclass
class SceneQA:
    image: np.ndarray  # (H, W, 3) uint8
    shapes: list[tuple[str, str, int]]  # (colour, shape, cell)
    questions: dict[str, list[tuple[str, str]]]  # kind -> (question, answer) pairs


def scene(index: int, split: str = "train", seed: int = 0, size: int = 64) -> SceneQA:
    """Scene `index` of `split` with every question it can answer, by kind."""
    rng = np.random.default_rng([seed, SPLITS[split], index, 303])
    pairs = list(product(COLOURS, SHAPES))
    n = int(rng.integers(2, 5))
    chosen = [pairs[i] for i in rng.choice(len(pairs), n, replace=False)]
    cells = [int(c) for c in rng.permutation(4)[:n]]
    img = canvas(rng, size)
    for (colour, shape), cell in zip(chosen, cells, strict=True):
        cx = (0.25 + 0.5 * (cell % 2) + rng.uniform(-0.05, 0.05)) * size
        cy = (0.25 + 0.5 * (cell // 2) + rng.uniform(-0.05, 0.05)) * size
        paint(img, shape_mask(shape, size, cx, cy, rng.uniform(0.13, 0.18) * size), colour, rng)
    shapes = [(c, s, cell) for (c, s), cell in zip(chosen, cells, strict=True)]
    return SceneQA(img, shapes, questions(shapes, rng))


def questions(shapes: list[tuple[str, str, int]], rng: np.random.Generator):
    at = {cell: (c, s) for c, s, cell in shapes}
    absent = [p for p in product(COLOURS, SHAPES) if p not in {(c, s) for c, s, _ in shapes}]
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    for c, s, cell in shapes:
        out["existence"].append((f"Is there a {c} {s}?", "yes"))
        out["position"].append((f"Where is the {c} {s}?", CELLS[cell]))
        row, col = divmod(cell, 2)
        for rel, (dr, dc) in RELATIONS.items():
            r, k = row + dr, col + dc
            if 0 <= r < 2 and 0 <= k < 2 and r * 2 + k in at:
                oc, os = at[r * 2 + k]
                out["relation"].append((f"What is {rel} the {c} {s}?", f"the {oc} {os}"))
    for i in rng.choice(len(absent), len(shapes), replace=False):  # as many noes as yeses
        c, s = absent[int(i)]
        out["existence"].append((f"Is there a {c} {s}?", "no"))
    for s in SHAPES:
        count = sum(1 for _, shape, _ in shapes if shape == s)
        out["count"].append((f"How many {s}s?", NUMBERS[count]))
    return out


def with_words(question: str, words: str) -> str:
    """A question with its scene's description before it (the aux-as-text prompt form)."""
    return f"{words}\n{question}" if words else question


def other_scene(index: int, samples: int) -> int:
    """The held-out scene whose words stand in for scene `index`'s in the shuffled-aux
    control: half the set away, so never itself (samples >= 2)."""
    return (index + max(1, samples // 2)) % samples
