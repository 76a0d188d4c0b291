"""Examples -> token ids and labels in the template's layout, then right-padded batches.

caption:  [BOS] caption </s>           (targets: caption and </s>)
instruct: [BOS] system? user q sep assistant  a sep ... </s>   (targets: answers and </s>)
lm:       the same texts with every token a target (stage 0 language pretraining); a share
          (`context_mix`) first reads the caption's words (shuffled, untargeted) where the
          modality block will later stand: the tiny LLM learns to use what precedes it
The modality block is inserted after BOS by the model (`insert_placeholders`).
"""

from __future__ import annotations

import numpy as np
import torch

from onellm.config import ChatConfig
from onellm.data.sources import Example
from onellm.model import IGNORE_INDEX
from onellm.template import render_training


def tokens(
    example: Example, tok, chat: ChatConfig, rng: np.random.Generator, *, use_turns: bool,
    lm: bool = False, context_mix: float = 0.0,
):  # fmt: skip
    """-> (input_ids, labels) lists for one example, read as its conversation (`use_turns`)
    or its caption; `lm`: every token is a target, and a `context_mix` share first reads
    the caption's words."""
    segments = render_training(
        chat, example.turns if use_turns else None, None if use_turns else example.caption
    )
    ids, labels = [tok.bos_token_id], [IGNORE_INDEX]
    if lm and rng.random() < context_mix:
        # shuffled words: the LM must look attributes up by content, not copy by offset,
        # which is what an unordered block of modality tokens can give it
        words = example.caption.split()
        context = tok(
            " ".join(words[i] for i in rng.permutation(len(words))), add_special_tokens=False
        ).input_ids
        ids, labels = ids + context, labels + [IGNORE_INDEX] * len(context)
    for text, target in segments:
        piece = tok(text, add_special_tokens=False).input_ids
        ids += piece
        labels += piece if (target or lm) else [IGNORE_INDEX] * len(piece)
    return ids + [tok.eos_token_id], labels + [tok.eos_token_id]


def collate(rows: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) rows: input_ids, attention_mask, labels (B, L)."""
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
    }
    for i, (ids, labels) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = 1
        out["labels"][i, : len(labels)] = torch.tensor(labels)
    return out


def length_groups(lengths: list[int], groups: int) -> list[list[int]]:
    """Row indices in `groups` runs of similar length (shortest first; ties keep their
    order), so that each run is padded only to its own longest row."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [part.tolist() for part in np.array_split(order, groups) if len(part)]
