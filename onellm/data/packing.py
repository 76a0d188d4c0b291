"""Packed rows: a micro-batch's samples laid end to end, with no padding between them.

    row 0: [BOS a a a a </s>][BOS b b </s>][BOS c c c </s>]      position_ids 0..5 0..3 0..4
    row 1: [BOS d d d d d d d </s>][pad pad]                      position_ids 0..8 0..1

Samples go into rows of at most `pack_tokens` positions by first-fit decreasing (the longest
first, each into the first row with room), as LMMs-Engine's packer does, then are spread over
that many rows to even their lengths (less padding ends the shorter rows). Inside a row they
keep the micro-batch's order, so a micro-batch that fits one row reads its samples in the
order an unpacked batch does (an LLM MoE layer's capacity and gate noise are drawn in that
order: first come, first served). Position ids restart at 0 at each sample, and what is left
of a row is padding with its own restarting positions. The LLM then gets
`attention_mask=None` and these `position_ids`: transformers' masking_utils reads the
restarts as packed sequences (`find_packed_sequence_indices`) and builds a block-diagonal
causal mask (sdpa, eager, flex_attention), and flash_attention_2 reads them as varlen
cu_seqlens, the way its DataCollatorWithFlattening and LLaMA-Factory's neat_packing feed
it. So attention never crosses samples and each sample's RoPE positions are its own.

Each sample's first label is -100 (nothing predicts a sample's first token unpacked either),
so the next-token loss never reaches from one sample into the next and the loss's item count
is the unpacked batch's. `unpack` gathers a packed tensor back into per-sample rows for
what reads states by sample (output experts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from onellm.errors import ConfigError
from onellm.modeling.layout import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sample indices in bins of at most `capacity` total length: longest first, each into
    the first bin with room (ties keep their order); then, as many bins, each sample
    (longest first) into the emptiest one where that keeps every bin within `capacity`:
    rows of about equal length, so the batch's last row is not mostly padding. Each bin's
    indices ascending."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ConfigError(
            f"pack_tokens: expected at least the longest sample's {max(too_long)} positions, "
            f"got {capacity}"
        )
    longest_first = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    bins: list[list[int]] = []
    room: list[int] = []
    for i in longest_first:
        b = next((b for b, left in enumerate(room) if lengths[i] <= left), None)
        if b is None:
            bins.append([])
            room.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= lengths[i]
    balanced: list[list[int]] = [[] for _ in bins]
    load = [0] * len(bins)
    for i in longest_first:  # the longest-processing-time rule over the same row count
        b = min(range(len(bins)), key=lambda b: load[b])
        if load[b] + lengths[i] > capacity:
            return [sorted(b) for b in bins]  # no better than first fit: keep it
        balanced[b].append(i)
        load[b] += lengths[i]
    return [sorted(b) for b in balanced]


def pack(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, pack_tokens: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(ids, labels) samples -> packed rows (R, W): input_ids, labels, position_ids,
    attention_mask (1 on samples, 0 on the padding that ends a row: what the LLM's experts
    skip; the LLM itself gets none), `unpack` (N, Lmax) each sample's flat positions (-1
    past its end), samples in their given order; and `order`, the samples as the rows read
    them (a modality's inputs fill its placeholder runs in that order)."""
    bins = first_fit_decreasing([len(ids) for ids, _ in rows], pack_tokens)
    width = max(sum(len(rows[i][0]) for i in b) for b in bins)
    shape = (len(bins), width)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
    }
    order = [i for b in bins for i in b]
    longest = max(len(ids) for ids, _ in rows)
    index = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, b in enumerate(bins):
        at = 0
        for i in b:
            ids, labels = rows[i]
            n = len(ids)
            out["input_ids"][r, at : at + n] = torch.tensor(ids)
            out["labels"][r, at + 1 : at + n] = torch.tensor(labels[1:])  # first: no target
            out["position_ids"][r, at : at + n] = torch.arange(n)
            out["attention_mask"][r, at : at + n] = 1
            index[i, :n] = r * width + torch.arange(at, at + n)
            at += n
        out["position_ids"][r, at:] = torch.arange(width - at)  # the padding: a run of its own
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    out["unpack"] = index.masked_fill(torch.arange(longest)[None] >= lengths[:, None], -1)
    return out, order


def unpack(x: torch.Tensor, index: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """A packed (R, W, ...) tensor -> per-sample rows (N, Lmax, ...) by `pack`'s `unpack`
    index, right-padded with `fill` (a sample's positions in its own row, from 0)."""
    flat = x.reshape(-1, *x.shape[2:])
    out = flat[index.clamp(min=0)]
    pad = (index < 0).reshape(*index.shape, *[1] * (x.dim() - 2))
    return out.masked_fill(pad, fill)


def is_packed(
    position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None
) -> bool:
    """Whether (B, L) position ids restart inside a row's tokens (`attention_mask`'s ones):
    packed samples. Positions that count a row's tokens from 0, left- or right-padded as
    generation and padded training give them, are not."""
    if position_ids is None:
        return False
    real = torch.ones_like(position_ids, dtype=torch.bool)
    if attention_mask is not None:
        real = attention_mask.to(position_ids.device).bool()
    counted = real.long().cumsum(-1) - 1
    return bool(((position_ids != counted) & real).any())


def llm_call(attention_mask: torch.Tensor | None, llm_kwargs: dict):
    """What the model's forward hands its LLM and its experts: -> (the LLM's attention mask,
    the packed rows' position ids or None). Packed, the LLM gets no mask and no cache
    (`use_cache=False` in `llm_kwargs`): transformers looks for restarting positions only
    then; `attention_mask` still marks the padding that ends a row, for the experts."""
    position_ids = llm_kwargs.get("position_ids")
    if not is_packed(position_ids, attention_mask):
        return attention_mask, None
    llm_kwargs["use_cache"] = False
    return None, position_ids


def sample_index(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) packed position ids -> each position's sample within its row (0, 1, ...)."""
    return (position_ids == 0).long().cumsum(-1) - 1


# Packed rows trade SDPA's causal kernel for a masked one. On the tiny model that costs ~27% a
# position (the demo's stage 0: 13% slower packed, with 11% of its padded positions padding);
# at OneLLM-7B's shapes the LLM's matmuls dwarf it. So `auto` packs a micro-batch when that
# removes at least this share of its padded positions, and `packing: true` always does.
AUTO_MIN_SAVING = 0.2


def resolve(packing: bool | str, pack_tokens: int | None, model) -> tuple[int | None, str]:
    """A stage's `packing` (true | false | auto) and `pack_tokens` on `model` -> the row
    length to pack into (None: padded rows) and why, for the log. Packed equals padded for
    every part (a MoAI mixer reads each sample's own aux text, runs and text), so `auto` is on
    wherever packing saves (`min_saving`)."""
    if packing is False:
        return None, "off (packing: false)"
    tokens = pack_tokens or model.llm.config.max_position_embeddings
    if packing == "auto":
        return tokens, (
            f"on: samples end to end in rows of at most {tokens} positions, for each "
            f"micro-batch whose padded rows it shortens by {AUTO_MIN_SAVING:.0%} or more (auto)"
        )
    return tokens, f"on: samples end to end in rows of at most {tokens} positions"


def min_saving(packing: bool | str) -> float:
    """The share of padded positions a micro-batch must lose to be packed (`resolve`)."""
    return AUTO_MIN_SAVING if packing == "auto" else 0.0


def saves(lengths: Sequence[int], pack_tokens: int, share: float) -> bool:
    """Whether packing samples of `lengths` into rows of `pack_tokens` removes at least
    `share` of the positions padding them to the longest would take (0: always pack)."""
    if share <= 0:
        return True
    bins = first_fit_decreasing(lengths, pack_tokens)
    packed = len(bins) * max(sum(lengths[i] for i in b) for b in bins)
    return packed <= (1 - share) * len(lengths) * max(lengths)
