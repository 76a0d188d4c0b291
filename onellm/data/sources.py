"""Training sources: where a stage's examples come from, deterministic by (seed, position).

Example number p of a source is scene `perm(seed, p // pool)[p % pool]`: shuffled passes
over a fixed pool, so a run resumed at step s sees exactly what an uninterrupted run sees.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from onellm.data import shapes
from onellm.data.manifest import Manifest
from onellm.data.shards import Shards, is_shards, materialised
from onellm.errors import ConfigError
from onellm.registry import TASKS
from onellm.training.stage import SourceConfig


@dataclass
class Example:
    """One training example before tokenisation."""

    input: torch.Tensor | None  # preprocessed (1, *input_shape), or None for text-only
    caption: str | None
    turns: list[tuple[str, str]]
    raw: Any = None  # the raw input (kept for the contrastive stage's images)
    targets: dict[str, Any] | None = None  # seg: mask, pixels; gen: image; sam: its parts
    zoom: float | None = None  # clip: the scale this draw shrinks the image by
    features: torch.Tensor | None = None  # (1, S+1, W) universal encoder outputs, if cached
    more: dict[str, torch.Tensor] = field(default_factory=dict)  # other modalities' inputs
    aux: str | None = None  # what a MoAI model's auxiliary sources say about `raw` (kept once said)


class Source:
    """A pool of examples of one modality (or text), indexable by position. What an
    example is comes from the source's task (onellm/tasks/); by default a shapes-world
    scene or a manifest record."""

    def __init__(self, model: Any, key: str, cfg: SourceConfig, seed: int) -> None:
        self.cfg, self.seed, self.model = cfg, seed, model
        self.task = TASKS.get(cfg.task)
        names = cfg.modality if isinstance(cfg.modality, list) else [cfg.modality or key]
        text_only = self.task.text_only and cfg.modality is None
        self.modality = None if text_only else model.modality_key(names[0])
        # the other modalities each sample holds beside `modality`
        self.more = [] if text_only else [model.modality_key(m) for m in names[1:]]
        if len(set(self.more) | {self.modality}) != len(names) and not text_only:
            raise ConfigError(f"data.{key}.modality: expected distinct modalities, got {names}")
        head = self.task.output
        if head is not None and head not in model.outputs.token_ids:
            raise ConfigError(
                f"data.{key}: task {cfg.task} needs outputs.{head} in the model config"
            )
        # the shapes world's examples are kept (its pool bounds them); a manifest's or a
        # shard's are read again on every pass, so memory stays flat over any number of records
        self._cache: dict[int, Example] | None = None
        self.records: Manifest | Shards | None = None
        self.features: Any = None  # a FeatureCache when the stage reads cached encoder outputs
        if cfg.data == "synthetic" or self.task.synthetic_only:
            if cfg.data != "synthetic":
                raise ConfigError(
                    f"data.{key}: task {cfg.task} reads the synthetic shapes world only"
                )
            self.size = cfg.pool
            self._cache = {}
            kinds = [self.modality] if self.modality else list(model.modalities)
            self._kinds = [shapes.modality_instance(k, model) for k in kinds]
            self._more = [shapes.modality_instance(k, model) for k in self.more]
        elif is_shards(cfg.data):
            if self.more:
                raise ConfigError(
                    f"data.{key}: shards hold one modality per sample; give samples with "
                    "several modalities as a manifest (`inputs` records)"
                )
            self.records = Shards(cfg.data, self.modality)
            self.size = len(self.records)
        else:
            wanted = {self.modality, *self.more}
            self.records = Manifest(
                cfg.data, keep=lambda mods: {model.modality_key(m) for m in mods} == wanted
            )
            self.size = len(self.records)

    def index(self, position: int) -> int:
        epoch, k = divmod(position, self.size)
        return int(_order(self.seed, epoch, self.size)[k])

    def __getitem__(self, position: int) -> Example:
        i = self.index(position)
        if self._cache is None:
            ex = self.task.example(self, i)
        else:
            if i not in self._cache:
                self._cache[i] = self.task.example(self, i)
            ex = self._cache[i]
        if self.cfg.zoom is not None:  # a new draw on every pass; the batch applies it
            scale = np.random.default_rng([self.seed, position, 13]).uniform(*self.cfg.zoom)
            ex = replace(ex, zoom=float(scale))
        return ex

    def scene(self, i: int) -> Example:
        """Example i as a manifest record or a shapes-world scene with a conversation about
        it; the input preprocessed (1, *input_shape) on the CPU (batches move to the
        model's device), or its universal encoder features read from the feature cache."""
        preprocess = self.task.needs_input and self.features is None
        features = self.features[i] if self.features is not None else None
        if self.records is not None:
            r = self.records[i]
            inputs = {
                self.model.modality_key(m): v
                for m, v in zip(r.modalities, (r.input, *r.more.values()), strict=True)
            }
            x = self._preprocess(self.modality, inputs[self.modality]) if preprocess else None
            more = {m: self._preprocess(m, inputs[m]) for m in self.more}
            return Example(
                x,
                r.caption,
                r.turns,
                r.input if isinstance(r.input, str) else None,
                features=features,
                more=more,
            )
        mod = self._kinds[i % len(self._kinds)]
        scene, x = rendered(mod, i, self.seed, preprocess=preprocess)
        if self._more:  # a shapes-world pair: scene i of each modality, described together
            others = [rendered(m, i, self.seed, preprocess=True) for m in self._more]
            caption = " and ".join([scene.caption, *(sc.caption for sc, _ in others)])
            ask = "Describe both." if len(others) == 1 else "Describe them."
            more = dict(zip(self.more, (y for _, y in others), strict=True))
            return Example(x, caption, [(ask, caption)], scene.input, features=features, more=more)
        rng = np.random.default_rng([self.seed, i, 7])
        turns = conversation(scene, rng)
        return Example(x, scene.caption, turns, scene.input, features=features)

    def _preprocess(self, key: str, raw: Any) -> torch.Tensor:
        with materialised(raw) as path:
            return self.model.modalities[key].preprocess(path).unsqueeze(0)


@functools.lru_cache(maxsize=8)
def _order(seed: int, epoch: int, size: int) -> np.ndarray:
    """Pass `epoch`'s shuffle of a pool, drawn once: a permutation of stage 0's 8192 images
    was ~0.12 ms, and a 128-image batch asked for it 128 times."""
    order = np.random.default_rng([seed, epoch]).permutation(size)
    order.flags.writeable = False
    return order


# Training scenes of the shapes world, shared by every stage that runs in this process (the
# demo runs five): a scene and its preprocessed input depend only on the modality's sizes,
# the index and the seed, and rendering them was ~13% of a short stage's time.
_RENDERED: dict[tuple, list[Any]] = {}
_RENDERED_MAX = 32768  # scenes; the tiny config's 8 pools of 2048 fit, a little under 1 GB


def modality_settings(mod: Any) -> tuple[tuple[str, str], ...]:
    """A modality object's plain settings (sizes, rates, ...): what its inputs depend on."""
    plain = (int, float, str, bool, tuple, list, dict, type(None))
    return tuple(sorted((k, repr(v)) for k, v in vars(mod).items() if isinstance(v, plain)))


def rendered(mod: Any, i: int, seed: int, *, preprocess: bool) -> tuple[shapes.Scene, Any]:
    """Training scene `i` of modality object `mod` and, if asked, its preprocessed input
    (1, *input_shape) on the CPU (None when not asked, even where an earlier stage in
    this process preprocessed it: a task without inputs never carries one)."""
    key = (type(mod), modality_settings(mod), i, seed)
    if key not in _RENDERED:
        if len(_RENDERED) >= _RENDERED_MAX:
            _RENDERED.clear()
        _RENDERED[key] = [shapes.render(mod, i, "train", seed), None]
    entry = _RENDERED[key]
    if preprocess and entry[1] is None:
        entry[1] = mod.preprocess(entry[0].input).unsqueeze(0)
    return entry[0], entry[1] if preprocess else None


def conversation(scene: shapes.Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-3 turns about a scene: a description request and its attribute questions, shuffled."""
    pool = [(str(rng.choice(["What is this?", "Describe it."])), scene.caption), *scene.qa]
    order = rng.permutation(len(pool))[: int(rng.integers(1, min(3, len(pool)) + 1))]
    return [pool[j] for j in order]
