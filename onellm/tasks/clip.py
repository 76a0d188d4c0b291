"""clip: contrastive training of the universal encoder (stage 0 at tiny scale): images (or
clips) against their captions read by a small text tower trained beside it
(onellm/training/contrastive.py). `zoom: [lo, hi]` shrinks each image by a factor drawn per
position (CLIP's scale augmentation). The loss is a mean over samples; no held-out metric."""

from __future__ import annotations

from typing import Any

import torch

from onellm.errors import ConfigError
from onellm.training.contrastive import ContrastiveHead, zoom_out
from onellm.training.task import register
from onellm.training.text_tasks import TextTask


class Clip(TextTask):
    name = "clip"
    to_llm = False
    packs = False  # its rows are the text tower's (one caption a row, read at its end)

    def check(self, key, cfg) -> None:
        z = cfg.zoom
        if z is not None and (len(z) != 2 or not 0 < z[0] <= z[1] <= 1):
            raise ConfigError(f"data.{key}.zoom: expected [lo, hi] with 0 < lo <= hi <= 1, got {z}")

    def aux(self, model) -> dict[str, torch.nn.Module]:
        return {
            "clip": ContrastiveHead(width=model.encoder.width, vocab_size=len(model.text_tokenizer))
        }

    def extra(self, batch: dict[str, Any], examples, b) -> dict[str, Any]:
        batch["pixels"] = torch.cat([ex.input for ex in examples])
        if b.cfg.zoom is not None:  # the source drew each example's scale
            batch["pixels"] = zoom_out(batch["pixels"], [ex.zoom for ex in examples])
        batch["captions"] = [ex.caption for ex in examples]
        return batch

    def items(self, batch: dict[str, Any]) -> int:
        return batch["pixels"].shape[0]

    def loss(self, s, batch: dict[str, Any], items: torch.Tensor):
        ids, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:]  # no BOS
        loss = s.aux["clip"].loss(s.model, batch["pixels"], ids, mask, batch["captions"])
        return loss * self.items(batch) / items, {}


register(Clip())
