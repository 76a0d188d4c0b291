"""The shared shape of tasks that train the LLM on token sequences (caption, instruct, lm,
seg, gen): tokenise in the template's layout, pad, the next-token loss over target tokens."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from onellm.data.batches import collate, length_groups, tokens
from onellm.data.sources import Example
from onellm.tasks.base import Batching, Step, Task


class TextTask(Task):
    # long and short texts in separate micro-batches, each padded to its own longest row
    # (stage 0's LM batches were 64% padding); the count depends on the batch size only,
    # so every process runs as many forward passes (FSDP needs that)
    length_grouped: ClassVar[bool] = False
    lm: ClassVar[bool] = False  # every token is a target (language pretraining)
    to_llm: ClassVar[bool] = True  # the modality input goes into the LLM's sequence

    def use_turns(self, example: Example, rng: np.random.Generator, b: Batching) -> bool:
        """Whether the example is read as its conversation (else as its caption)."""
        return False

    def collate(self, examples: list[Example], b: Batching) -> list[dict[str, Any]]:
        model = b.model
        rows = []
        for j, ex in enumerate(examples):
            rng = b.rng(j)
            turns = self.use_turns(ex, rng, b)
            rows.append(tokens(ex, model.text_tokenizer, model.config.chat, rng, use_turns=turns,
                               lm=self.lm, context_mix=b.cfg.context_mix))  # fmt: skip
        n = max(1, len(examples) // 16) if self.length_grouped else 1
        out = []
        for group in length_groups([len(ids) for ids, _ in rows], n):
            batch = collate([rows[k] for k in group], model.text_tokenizer.pad_token_id or 0)
            part = [examples[k] for k in group]
            if b.modality is not None and self.to_llm:
                if part[0].features is not None:  # the feature cache's encoder outputs
                    batch["features"] = torch.cat([ex.features for ex in part])
                else:
                    batch["inputs"] = torch.cat([ex.input for ex in part])
            out.append(self.extra(batch, part, b))
        return out

    def extra(self, batch: dict[str, Any], examples: list[Example], b: Batching) -> dict[str, Any]:
        """What the task needs beside the token rows (decoder targets)."""
        return batch

    def items(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    @staticmethod
    def input_modality(s: Step, batch: dict[str, Any]) -> str | None:
        """The modality whose input this batch carries into the LLM (None: text only)."""
        return s.modality if "inputs" in batch or "features" in batch else None

    def forward(self, s: Step, batch: dict[str, Any], items: torch.Tensor, **kwargs: Any):
        modality = self.input_modality(s, batch)
        return s.model(batch["input_ids"], inputs=batch.get("inputs"), modality=modality,
                       features=batch.get("features"),
                       attention_mask=batch["attention_mask"], labels=batch["labels"],
                       num_items_in_batch=items, **kwargs)  # fmt: skip

    def loss(self, s: Step, batch: dict[str, Any], items: torch.Tensor):
        return self.forward(s, batch, items).loss, {}


class ConversationTask(TextTask):
    """Reads an example as its conversation, except a `caption_mix` share kept as captions."""

    def use_turns(self, example: Example, rng: np.random.Generator, b: Batching) -> bool:
        return bool(example.turns) and rng.random() >= b.cfg.caption_mix
