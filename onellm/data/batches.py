"""Examples -> token ids and labels in the template's layout (onellm/modeling/layout.py),
then right-padded batches.

caption:  [BOS] <m>... caption </s>           (targets: caption and </s>)
instruct: [BOS] <m>... system? user q sep assistant  a sep ... </s>   (targets: answers and </s>)
lm:       the same texts with every token a target (stage 0 language pretraining); a share
          (`context_mix`) first reads the caption's words (shuffled, untargeted) where the
          modality block will later stand: the tiny LLM learns to use what precedes it
Each modality input's placeholder run stands where the text names `<m>`, else after BOS,
exactly as in a chat prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onellm.config import ChatConfig
from onellm.data.sources import Example
from onellm.modeling.layout import TokenLayout, pad
from onellm.modeling.template import render_training


def tokens(
    example: Example,
    layout: TokenLayout,
    chat: ChatConfig,
    rng: np.random.Generator,
    *,
    use_turns: bool,
    lm: bool = False,
    context_mix: float = 0.0,
    given: Sequence[str] = (),
):
    """-> (input_ids, labels) lists for one example carrying the modalities `given`, read
    as its conversation (`use_turns`) or its caption; `lm`: every token is a target, and a
    `context_mix` share first reads the caption's words."""
    segments = render_training(
        chat, example.turns if use_turns else None, None if use_turns else example.caption
    )
    if lm:
        segments = [(text, True) for text, _ in segments]
    if lm and rng.random() < context_mix:
        # shuffled words: the LM must look attributes up by content, not copy by offset,
        # which is what an unordered block of modality tokens can give it
        words = example.caption.split()
        segments.insert(0, (" ".join(words[i] for i in rng.permutation(len(words))), False))
    return layout.row(segments, given, eos=True)


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad (ids, labels) rows: input_ids, attention_mask, labels (B, L)."""
    return pad(rows, pad_id)


def length_groups(lengths: list[int], groups: int) -> list[list[int]]:
    """Row indices in `groups` runs of similar length (shortest first; ties keep their
    order), so that each run is padded only to its own longest row."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [part.tolist() for part in np.array_split(order, groups) if len(part)]
