"""The token layout: the one path from text segments and modality inputs to the ids the LLM
reads, for training rows and chat prompts alike (transformers' llava layout).

    [BOS] <m> x (N_m+2) ... text ... [EOS]   one placeholder run per modality input

A modality's placeholder `<m>` goes where the text names it, else right after BOS
(OneLLM's layout). Each segment is tokenised on its own, so a training row's prompt is
token for token the chat prompt of the same conversation. Only placeholders, and output
tokens (`<seg>`, `<gen>`) inside answers, become special ids: a user who types "<seg>"
gets text (onellm/modeling/special_tokens.py). `scatter` then fills each run with its block of
embeddings (the model's forward); nothing widens a sequence after this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from onellm.errors import InputError
from onellm.modeling.special_tokens import encode_prompt
from onellm.modeling.template import Segment

IGNORE_INDEX = -100


def check_ids(input_ids: torch.Tensor) -> None:
    """Raise `InputError` unless `input_ids` is (B, L) with L >= 1."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InputError(
            f"text: expected input_ids (B, L) with L >= 1, got {tuple(input_ids.shape)}"
        )


class TokenLayout:
    """Placeholder ids, each modality's run length (its N_m tokens and two tags: the
    projection's), and how a sequence is laid out and filled."""

    def __init__(
        self,
        tokenizer,
        placeholder_ids: Mapping[str, int],
        run_lengths: Mapping[str, int],
        *,
        output_tokens: Sequence[str] = (),
        bos_token_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.placeholder_ids = dict(placeholder_ids)
        self.run_lengths = dict(run_lengths)
        self._by_id = {self.placeholder_ids[k]: n for k, n in self.run_lengths.items()}
        self.output_tokens = list(output_tokens)
        self.bos_token_id = tokenizer.bos_token_id if tokenizer is not None else bos_token_id

    @property
    def block_len(self) -> int:
        """The run length every modality shares (query projections: Q+2)."""
        lengths = set(self.run_lengths.values())
        if len(lengths) != 1:
            raise ValueError(f"run lengths differ by modality: {self.run_lengths}")
        return lengths.pop()

    def row(
        self, segments: Sequence[Segment], given: Sequence[str], *, eos: bool = False
    ) -> tuple[list[int], list[int]]:
        """Segments (text, is target) of one sample and the modalities it carries ->
        (input_ids, labels): BOS, the segments' tokens (labels on targets only), EOS as a
        target if asked, and a run of N_m+2 placeholder ids per modality (never targets)."""
        tok = self.tokenizer
        if tok is None:
            raise InputError(
                "text: this model has no tokenizer; set llm.tokenizer to a tokenizer dir"
            )
        marks = [f"<{k}>" for k in self.placeholder_ids]
        ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        for text, target in segments:
            piece = encode_prompt(tok, text, marks + self.output_tokens * target, bos=False)
            ids += piece
            labels += piece if target else [IGNORE_INDEX] * len(piece)
        if eos:
            ids, labels = ids + [tok.eos_token_id], labels + [tok.eos_token_id]
        return self.place(ids, labels, given)

    def place(
        self, ids: list[int], labels: list[int], given: Sequence[str]
    ) -> tuple[list[int], list[int]]:
        """Check each given modality has one placeholder (a missing one goes after BOS) and
        no other modality has any, then expand each placeholder into its run."""
        counts = {k: ids.count(pid) for k, pid in self.placeholder_ids.items()}
        for key, n in counts.items():
            if key in given and n > 1:
                raise InputError(
                    f"{key}: expected one <{key}> placeholder for the {key} input, got {n}"
                )
            if key not in given and n:
                raise InputError(
                    f"{key}: the text has a <{key}> placeholder, expected a {key} input, got none"
                )
        lead = [self.placeholder_ids[k] for k in given if not counts[k]]
        at = int(bool(ids) and ids[0] == self.bos_token_id)
        ids = ids[:at] + lead + ids[at:]
        labels = labels[:at] + [IGNORE_INDEX] * len(lead) + labels[at:]
        out_ids, out_labels = [], []
        for i, label in zip(ids, labels, strict=True):
            n = self._by_id.get(i, 1)
            out_ids += [i] * n
            out_labels += [IGNORE_INDEX if i in self._by_id else label] * n
        return out_ids, out_labels

    def widen(
        self, input_ids: torch.Tensor, given: Sequence[str], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`place` over token rows that already are ids (B, L), without padding (a
        reference fixture's, a benchmark's): -> ids and labels (B, L + runs)."""
        check_ids(input_ids)
        lab = input_ids if labels is None else labels
        rows = [
            self.place(r, t, given) for r, t in zip(input_ids.tolist(), lab.tolist(), strict=True)
        ]
        ids = torch.tensor([r for r, _ in rows], device=input_ids.device)
        out = torch.tensor([t for _, t in rows], device=input_ids.device)
        return ids, (out if labels is not None else None)

    def scatter(
        self,
        embedding: nn.Module,
        input_ids: torch.Tensor,
        blocks: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Ids (B, L) with placeholder runs -> `inputs_embeds` (B, L, D): `blocks[m]`
        (N, N_m+2, D) fills modality m's runs in reading order (sample by sample), after a
        count check; every run must be filled."""
        check_ids(input_ids)
        blocks = dict(blocks or {})
        ids = torch.tensor(list(self.placeholder_ids.values()), device=input_ids.device)
        is_placeholder = torch.isin(input_ids, ids)
        embeds = embedding(input_ids.masked_fill(is_placeholder, 0))
        filled = torch.zeros_like(is_placeholder)
        for key, block in blocks.items():
            where = input_ids == self.placeholder_ids[key]
            given, needed = block.shape[0] * block.shape[1], int(where.sum())
            if given and not needed:
                raise InputError(
                    f"{key}: expected a <{key}> placeholder run in the text for the "
                    f"{block.shape[0]} input(s) given, got none (lay the text out with the model's layout)"
                )
            if given != needed:
                raise InputError(
                    f"{key}: expected {needed // self.run_lengths[key]} input(s) for the {key} "
                    f"placeholders in the text, got {block.shape[0]}"
                )
            embeds = embeds.masked_scatter(where.unsqueeze(-1), block.to(embeds.dtype))
            filled |= where
        if (is_placeholder & ~filled).any():
            missing = sorted(
                k for k, i in self.placeholder_ids.items() if ((input_ids == i) & ~filled).any()
            )
            raise InputError(
                f"{missing[0]}: expected an input for its placeholder in the text, got none"
            )
        return embeds


def pad(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, *, left: bool = False
) -> dict[str, torch.Tensor]:
    """(ids, labels) rows -> input_ids, attention_mask, labels (B, L): right-padded for
    training, left-padded (`left`) for generation, where positions follow the mask."""
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
    }
    for i, (ids, labels) in enumerate(rows):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        out["input_ids"][i, span] = torch.tensor(ids)
        out["attention_mask"][i, span] = 1
        out["labels"][i, span] = torch.tensor(labels)
    return out
