"""The shared shape of tasks that train the LLM on token sequences (caption, instruct, lm,
seg, gen): tokenise in the template's layout, pad, the next-token loss over target tokens."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from onellm.data.batches import collate, length_groups, tokens
from onellm.data.packing import pack, saves  # end to end: onellm/data/packing.py
from onellm.data.sources import Example
from onellm.inference.chat import pixels_of
from onellm.training.task import Batching, Step, Task


class TextTask(Task):
    # long and short texts in separate micro-batches, each padded to its own longest row
    # (stage 0's LM batches were 64% padding); the count depends on the batch size only,
    # so every process runs as many forward passes (FSDP needs that)
    length_grouped: ClassVar[bool] = False
    lm: ClassVar[bool] = False  # every token is a target (language pretraining)
    to_llm: ClassVar[bool] = True  # the modality input goes into the LLM's sequence
    packs = True

    def use_turns(self, example: Example, rng: np.random.Generator, b: Batching) -> bool:
        """Whether the example is read as its conversation (else as its caption)."""
        return False

    def collate(self, examples: list[Example], b: Batching) -> list[dict[str, Any]]:
        model = b.model
        chat = model.config.chat  # derived from the modules on each read: once per batch
        rows, given = [], []
        for j, ex in enumerate(examples):
            rng = b.rng(j)
            turns = self.use_turns(ex, rng, b)
            carried = self.carried(ex, b)
            rows.append(
                tokens(
                    ex,
                    model.layout,
                    chat,
                    rng,
                    use_turns=turns,
                    lm=self.lm,
                    context_mix=b.cfg.context_mix,
                    given=carried,
                )
            )
            given.append(carried)
        n = max(1, len(examples) // 16) if self.length_grouped else 1
        out = []
        pad_id = model.text_tokenizer.pad_token_id or 0
        for group in length_groups([len(ids) for ids, _ in rows], n):
            reading = group
            lengths = [len(rows[k][0]) for k in group]
            if b.pack_tokens and self.packs and saves(lengths, b.pack_tokens, b.pack_saving):
                batch, order = pack([rows[k] for k in group], pad_id, b.pack_tokens)
                reading = [group[k] for k in order]
            else:
                batch = collate([rows[k] for k in group], pad_id)
            inputs: dict[str, list] = {}
            features: dict[str, list] = {}
            for k in reading:  # each modality's inputs in reading order, as the runs stand
                ex = examples[k]
                for m in given[k]:
                    if m == b.modality and ex.features is not None:  # the feature cache's
                        features.setdefault(m, []).append(ex.features)
                    else:
                        inputs.setdefault(m, []).append(ex.input if m == b.modality else ex.more[m])
            if inputs:
                batch["inputs"] = {m: torch.cat(xs) for m, xs in inputs.items()}
            if features:
                batch["features"] = {m: torch.cat(xs) for m, xs in features.items()}
            if model.moai is not None:
                batch["aux"] = [aux_text(model, examples[k], b.modality) for k in reading]
            out.append(self.extra(batch, [examples[k] for k in group], b))
        return out

    def carried(self, example: Example, b: Batching) -> list[str]:
        """The modalities whose inputs this example puts in the LLM's sequence."""
        if b.modality is None or not self.to_llm:
            return []
        return [b.modality, *example.more]

    def extra(self, batch: dict[str, Any], examples: list[Example], b: Batching) -> dict[str, Any]:
        """What the task needs beside the token rows (decoder targets)."""
        return batch

    def items(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def forward(self, s: Step, batch: dict[str, Any], items: torch.Tensor, **kwargs: Any):
        if "position_ids" in batch:  # packed rows: each sample's positions restart
            kwargs["position_ids"] = batch["position_ids"]
        return s.model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            inputs=batch.get("inputs"),
            features=batch.get("features"),
            aux=batch.get("aux"),
            num_items_in_batch=items,
            **kwargs,
        )

    def loss(self, s: Step, batch: dict[str, Any], items: torch.Tensor):
        return self.forward(s, batch, items).loss, {}


def aux_text(model, example: Example, modality: str | None) -> str:
    """What the MoAI model's auxiliary sources say about the example's raw input (an input
    without pixels says nothing); said once per example (the shapes world keeps examples)."""
    if example.aux is None:
        seen = {} if modality is None or example.raw is None else {modality: example.raw}
        example.aux = model.moai.describe(model, [pixels_of(model, seen)])[0]
    return example.aux


class ConversationTask(TextTask):
    """Reads an example as its conversation, except a `caption_mix` share kept as captions."""

    def use_turns(self, example: Example, rng: np.random.Generator, b: Batching) -> bool:
        return bool(example.turns) and rng.random() >= b.cfg.caption_mix
