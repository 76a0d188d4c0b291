"""The shapes world: deterministic synthetic data for every modality, with train and
held-out splits (DESIGN.md). Each modality file holds its own `render(rng) -> Scene`.

    from onellm.data import shapes
    records = shapes.sample("image", 8, split="test", seed=0)   # .input, .caption, .qa
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onellm.data.draw import Scene
from onellm.errors import InputError
from onellm.modeling.modality import Renders, find_modality

SPLITS = {"train": 0, "test": 1}


def modality_instance(modality: Any, model: Any = None) -> Any:
    """A modality object: from `model` (its configured sizes), a name (defaults), or as given."""
    if not isinstance(modality, str):
        return modality
    if model is not None:
        return model.modalities[model.modality_key(modality)]
    return find_modality(modality)()


def render(modality: Any, index: int, split: str = "train", seed: int = 0) -> Scene:
    """Scene number `index` of `split`; the same (modality, index, split, seed) gives the
    same scene."""
    if split not in SPLITS:
        raise InputError(f"shapes: expected split 'train' or 'test', got {split!r}")
    if not isinstance(modality, Renders):
        raise InputError(
            f"{getattr(modality, 'name', modality)}: expected a modality with a synthetic renderer"
        )
    rng = np.random.default_rng([seed, SPLITS[split], index, _stable(modality.name)])
    return modality.render(rng)


def sample(
    modality: Any, n: int, split: str = "test", seed: int = 0, *, model: Any = None
) -> list[Scene]:
    """`n` scenes of `modality` (a name, a modality object, or a name with `model=` for its
    sizes)."""
    mod = modality_instance(modality, model)
    return [render(mod, i, split, seed) for i in range(n)]


def _stable(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))  # not hash(): that varies per process
