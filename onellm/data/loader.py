"""The stage's batches through torch's DataLoader: step s -> (source, micro-batches).

Everything a step holds is drawn from (seed, step) alone: which source it reads
(`choose_source`), the positions of its examples, and each example's own draws (from
(seed, position)). So the dataset is indexed by step and the sampler is just the steps still
to run: a run resumed at step s reads exactly what an uninterrupted run reads there, with
any number of workers, and each torchrun rank reads its own disjoint slice of every step.
Decoding and preprocessing run in the workers (`data_workers`); the training process only
moves finished batches to the device.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from onellm.data import packing
from onellm.data.sources import Source
from onellm.errors import ConfigError, OneLLMError
from onellm.training.stage import StageConfig
from onellm.training.task import Batching


def choose_source(weights: dict[str, float], seed: int, step: int) -> str:
    """The source step `step` draws from, with probability proportional to its weight."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(np.random.default_rng([seed, step, 1]).choice(len(keys), p=w / w.sum()))]


class StepBatches(Dataset):
    """Step s -> (the source it reads, this process's micro-batches of it, on the CPU); with
    `mix_sources`, each micro-batch draws its own source: (the sources, in order, and each
    one's micro-batches)."""

    def __init__(
        self,
        cfg: StageConfig,
        sources: dict[str, Source],
        model: Any,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.cfg, self.sources, self.model = cfg, sources, model
        self.rank, self.world = rank, world
        self.weights = {k: s.weight for k, s in cfg.data.items()}
        # the row length samples pack into (None: padded rows), and why (onellm/data/packing.py)
        self.pack_tokens, self.packing = packing.resolve(cfg.packing, cfg.pack_tokens, model)
        self.pack_saving = packing.min_saving(cfg.packing)
        for key in cfg.data:  # each process reads its own equal slice of every batch
            if self.batch_size(key) % world:
                raise ConfigError(
                    f"data.{key}: batch_size {self.batch_size(key)} must divide "
                    f"by the {world} processes"
                )

    def __len__(self) -> int:
        return self.cfg.steps

    def batch_size(self, key: str) -> int:
        return self.cfg.data[key].batch_size or self.cfg.batch_size

    def examples(self, key: str | tuple[str, ...]) -> int:
        """The examples (all processes) of a step reading `key` (mixed: one per micro-batch)."""
        if isinstance(key, tuple):
            return sum(self.batch_size(k) for k in key)
        return self.batch_size(key) * self.cfg.grad_accum

    def source_for(self, step: int, slot: int = 0) -> str:
        """The source of step `step` (of its micro-batch `slot` when sources mix)."""
        if self.cfg.mix_sources:
            return choose_source(self.weights, self.cfg.seed, step * self.cfg.grad_accum + slot)
        return choose_source(self.weights, self.cfg.seed, step)

    def __getitem__(self, step: int) -> tuple[Any, list[Any]]:
        if self.cfg.mix_sources:
            keys = tuple(self.source_for(step, a) for a in range(self.cfg.grad_accum))
            return keys, [self.batches(step, k, slots=[a]) for a, k in enumerate(keys)]
        key = self.source_for(step)
        return key, self.batches(step, key)

    def batches(self, step: int, key: str, slots: list[int] | None = None) -> list[dict[str, Any]]:
        """This process's micro-batches of step `step` from source `key` (those of the
        micro-batch `slots` alone, when given)."""
        src, size = self.sources[key], self.batch_size(key)
        local = size // self.world
        out = []
        for a in range(self.cfg.grad_accum) if slots is None else slots:
            # a source's scenes are indexed by step, so steps given to other sources leave gaps
            first = (step * self.cfg.grad_accum + a) * size + self.rank * local
            positions = list(range(first, first + local))
            b = Batching(
                self.model,
                src.cfg,
                src.modality,
                self.cfg.seed,
                positions,
                self.pack_tokens,
                self.pack_saving,
            )
            out += src.task.collate([src[p] for p in positions], b)
        return out


def steps(loader: DataLoader):
    """The loader's steps; a worker's `OneLLMError` comes back as its own one-line message
    (DataLoader re-raises it wrapped in the worker's traceback)."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except OneLLMError as e:
            text = str(e)
            if "DataLoader worker process" not in text:
                raise
            last = text.rstrip().splitlines()[-1]  # "onellm.errors.InputError: <message>"
            raise type(e)(last.split(": ", 1)[1] if ": " in last else last) from None


def _as_is(item: Any) -> Any:  # batch_size=None hands each step over whole
    return item


def step_loader(data: StepBatches, start: int, device: torch.device) -> DataLoader:
    """The steps from `start` on, prepared by `cfg.data_workers` worker processes (0: in the
    training process), `cfg.prefetch` steps ahead each, in pinned memory on CUDA."""
    cfg = data.cfg
    workers = cfg.data_workers
    options: dict[str, Any] = {}
    if workers:
        # fork shares the model's tokenizers and modalities with the workers as they are;
        # spawn would pickle the whole model (weights included) into every worker
        # (Linux only: macOS's system frameworks are not fork-safe, its default is spawn)
        ctx = "fork" if sys.platform.startswith("linux") else None
        options = {"prefetch_factor": cfg.prefetch, "multiprocessing_context": ctx}
    return DataLoader(
        data,
        batch_size=None,
        sampler=range(start, cfg.steps),
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=device.type == "cuda",
        **options,
    )
