"""The task contract: what a stage's source trains and how (one file per task in onellm/tasks/).

A task says how a source makes an example (`example`), how this process's share of a
step becomes micro-batches (`collate`), the loss of one micro-batch and what that loss
is a mean over (`loss`, `items`), and its held-out metric (`metrics`, `evaluate`). The
recipe (onellm/training/recipe.py) only ever calls these; a new task never edits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from onellm.errors import ConfigError
from onellm.registry import TASKS

if TYPE_CHECKING:
    from onellm.data.sources import Example, Source
    from onellm.model import OneLLM
    from onellm.training.stage import SourceConfig


@dataclass
class Batching:
    """What `collate` gets beside the examples: the source's settings and each example's
    position in the source (its random draws depend on (seed, position) alone)."""

    model: OneLLM
    cfg: SourceConfig
    modality: str | None
    seed: int
    positions: list[int]
    pack_tokens: int | None = None  # packed rows of at most this many positions (None: padded)
    pack_saving: float = 0.0  # pack only what loses this share of its padded positions (auto)

    def rng(self, j: int) -> np.random.Generator:
        """Example j's own generator for its tokenisation choices."""
        return np.random.default_rng([self.seed, self.positions[j], 3])


@dataclass
class Step:
    """What `loss` gets: the model, the stage's auxiliary modules and the accumulation."""

    model: OneLLM
    aux: nn.ModuleDict
    modality: str | None
    grad_accum: int


class Task:
    """Base task: examples from the source's scenes or manifest records."""

    name: ClassVar[str]
    output: ClassVar[str | None] = None  # the model output (`outputs.<name>`) it trains
    text_only: ClassVar[bool] = False  # no modality input unless the source names one
    synthetic_only: ClassVar[bool] = False  # its examples come from the shapes world only
    needs_input: ClassVar[bool] = True  # examples carry the preprocessed input
    captions: ClassVar[bool] = False  # its modality joins the stage's held-out caption table
    questions: ClassVar[bool] = False  # ... and the held-out question-answering table
    metrics: ClassVar[tuple[str, ...]] = ()  # what `evaluate` reports
    # its batches are LLM token rows that can be packed end to end (onellm/data/packing.py)
    packs: ClassVar[bool] = False

    def check(self, key: str, cfg: SourceConfig) -> None:
        """Raise `ConfigError` for source settings this task cannot take."""
        if cfg.zoom is not None:
            raise ConfigError(f"data.{key}.zoom: only task clip zooms, got task {self.name}")

    def aux(self, model: OneLLM) -> dict[str, nn.Module]:
        """Modules trained beside the model for this stage only (saved in checkpoints)."""
        return {}

    def example(self, source: Source, i: int) -> Example:
        return source.scene(i)

    def collate(self, examples: list[Example], b: Batching) -> list[dict[str, Any]]:
        raise NotImplementedError

    def items(self, batch: dict[str, Any]) -> int:
        """What the batch's loss is a mean over (samples, or target tokens)."""
        raise NotImplementedError

    def loss(
        self, s: Step, batch: dict[str, Any], items: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the step's loss (its sum over `items`), and extra
        figures to log."""
        raise NotImplementedError

    def evaluate(self, model: OneLLM, *, samples: int, seed: int) -> dict[str, Any]:
        """Held-out `metrics` on the shapes world's test split."""
        raise NotImplementedError(f"task {self.name} has no held-out metric of its own")


def register(task: Task) -> Task:
    """Validate a task's declaration and register it under `task.name`."""
    if not isinstance(task, Task):
        raise TypeError(f"tasks: expected a Task instance, got {type(task).__name__}")
    if task.metrics and not task.captions and type(task).evaluate is Task.evaluate:
        raise TypeError(f"tasks: {task.name} names metrics but has no evaluate()")
    return TASKS.register(task.name, task)


def output_tasks() -> list[str]:
    """The tasks with a held-out metric of their own (`onellm eval --task`)."""
    return [n for n in TASKS if TASKS.get(n).metrics and not TASKS.get(n).captions]
