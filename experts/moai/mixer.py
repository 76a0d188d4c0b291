"""MoAI's compressor and mixer (Lee et al., 2024) around a frozen LLM.

    aux text (experts/moai/auxiliary.py) --compressor (experts/moai/compressor.py)--> A (B, N, D)
      perceiver: `queries` latents over the words' embeddings (MoAI's);
      regions: one token per region the sources name, its words pooled
    at each chosen decoder layer l, the states h (B, L, D) entering it become
      visual positions:   h + g_v1(h) * CA(h -> A) + g_v2(h) * SA(h -> V_l)
      language positions: h + g_t1(h) * CA(h -> A) + g_t2(h) * CA(h -> V_l) + g_t3(h) * SA(h -> T_l)
    V_l: the states of the visual positions (the modality runs) entering layer l; T_l those
    of the language positions up to this one (causal, padding left out);
    g: softmax gates (MoAI's gating networks); each CA/SA a low-rank attention (MoAI's
    LoRA attention) whose output projection starts at zero.

Zero-initialised, an untrained mixer adds exact zeros: the LLM's outputs are bit-identical.
One departure from MoAI, for a causal LLM: visual states do not attend to language (the
text follows them, so in training they would see the answer), and language attends to
language causally. MoAI's SA_lang matters with a frozen LLM: it is what can carry the
question's object to the answer's position, where CA(-> A) looks it up.

The mixer joins each layer through `register_forward_pre_hook`, never by replacing or
subclassing `LlamaDecoderLayer`: the LLM's modules, weights and saved directory stay as
they are (LoRA, quantisation and FSDP see the same layers). A mixing context holds what
one call needs (the visual positions, the compressed aux tokens, each layer's visual
states); `generate`'s later steps, one token each, are language positions that read the
visual states the prefill kept (without a KV cache each step is the whole sequence again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onellm.errors import InputError
from onellm.experts.moai.auxiliary import build_source, run_sources
from onellm.experts.moai.compressor import COMPRESSORS, region_tokens, word_tokens
from onellm.experts.moai.experts import LayerMixer
from onellm.experts.projection.perceiver import PerceiverResampler
from onellm.modeling.llm import base_llm
from onellm.registry import MIXERS


@dataclasses.dataclass
class MixContext:
    """What one LLM call (or one `generate`) mixes with."""

    is_visual: torch.Tensor  # (B, L) bool, the prompt's visual positions
    valid: torch.Tensor  # (B, L) bool, its real positions (not padding)
    aux: torch.Tensor  # (B, N, D) compressed auxiliary tokens
    aux_valid: torch.Tensor  # (B, N) which exist (packed: a row's samples' side by side)
    # packed rows (onellm/data/packing.py): each position's sample in its row (B, L), and
    # each aux token's (N,): a position reads its own sample's aux, runs and text only
    sample: torch.Tensor | None = None
    aux_sample: torch.Tensor | None = None
    # per layer: the visual states and their mask, and the language states so far and theirs
    visual: dict[int, tuple[torch.Tensor, ...]] = dataclasses.field(default_factory=dict)
    language: dict[int, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


def gather_visual(h: torch.Tensor, is_visual: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each row's visual states, first, padded: (B, L, D) -> (B, Nv, D), valid (B, Nv) and
    where each came from (B, Nv)."""
    counts = is_visual.sum(-1)
    n = max(int(counts.max()), 1)
    order = torch.argsort((~is_visual).to(torch.int8), dim=-1, stable=True)[:, :n]
    states = h.gather(1, order[..., None].expand(-1, -1, h.shape[-1]))
    return states, torch.arange(n, device=h.device)[None] < counts[:, None], order


def packed_context(
    is_visual: torch.Tensor,
    valid: torch.Tensor,
    aux: torch.Tensor,
    aux_valid: torch.Tensor,
    starts: torch.Tensor,
    position_ids: torch.Tensor,
) -> MixContext:
    """Packed rows' context: compressed aux (S, N, D), one per sample in reading order, laid
    side by side per row (B, max samples x N, D); each position's sample and each aux token's."""
    counts = starts.sum(-1).tolist()
    n, width = aux.shape[1], aux.shape[2]
    rows = aux.new_zeros(len(counts), max(counts) * n, width)
    exists = torch.zeros(rows.shape[:2], dtype=torch.bool, device=aux.device)
    for r, (part, ok) in enumerate(zip(aux.split(counts), aux_valid.split(counts), strict=True)):
        rows[r, : part.shape[0] * n] = part.reshape(-1, width)
        exists[r, : part.shape[0] * n] = ok.reshape(-1)
    sample = (position_ids == 0).long().cumsum(-1) - 1
    aux_sample = torch.arange(max(counts), device=aux.device).repeat_interleave(n)
    return MixContext(is_visual, valid, rows, exists, sample, aux_sample)


class MoAI(nn.Module):
    """Auxiliary sources, compressor and per-layer mixers; `attach(llm)` joins the layers."""

    def __init__(
        self,
        *,
        llm_width: int,
        layers: Sequence[int],
        sources: Sequence[Any] = ("sam",),
        queries: int = 16,
        compressor_layers: int = 2,
        heads: int = 4,
        rank: int = 64,
        max_aux_tokens: int = 128,
        aux_states: int | None = None,
        compressor: str = "perceiver",
    ) -> None:
        super().__init__()
        if not layers:
            raise InputError("moai.layers: expected at least one decoder layer to mix in, got none")
        if rank % heads:
            raise InputError(f"moai: rank {rank} must be divisible by heads {heads}")
        self.layer_ids, self.max_aux_tokens = [int(i) for i in layers], max_aux_tokens
        # None: the compressor reads the aux words' embeddings (MoAI's); k: the frozen LLM's
        # states after decoder layer k over the aux text, each word read in its context
        self.aux_states = aux_states
        if compressor not in COMPRESSORS:
            raise InputError(
                f"moai.compressor: expected one of {list(COMPRESSORS)}, got {compressor!r}"
            )
        self.compressor_kind = compressor  # experts/moai/compressor.py: which, and why
        self.sources = [build_source(s) for s in sources]
        self.aux_positions = nn.Parameter(torch.zeros(max_aux_tokens, llm_width))
        if compressor == "perceiver":  # `queries` and `compressor_layers` are its
            self.latents = nn.Parameter(torch.randn(queries, llm_width) * 0.02)
            self.compressor = PerceiverResampler(
                width=llm_width, layers=compressor_layers, heads=heads, head_dim=llm_width // heads
            )
        self.mixers = nn.ModuleDict(
            {str(i): LayerMixer(width=llm_width, rank=rank, heads=heads) for i in self.layer_ids}
        )
        self.context: MixContext | None = None
        self._hooks: list[Any] = []

    def attach(self, llm: nn.Module) -> None:
        """Join each chosen decoder layer of `llm` (a LlamaForCausalLM, LoRA-wrapped or not)."""
        layers = base_llm(llm).model.layers
        for i in self.layer_ids:
            if not 0 <= i < len(layers):
                raise InputError(f"moai.layers: expected layers in 0..{len(layers) - 1}, got {i}")
            hook = functools.partial(self._mix, i)
            self._hooks.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))

    def _mix(self, i: int, module: nn.Module, args: tuple, kwargs: dict):
        ctx = self.context
        if ctx is None:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[0] != ctx.is_visual.shape[0]:
            raise InputError(
                "moai: expected the batch the mixing began with (beam search is not supported)"
            )
        n, length = ctx.is_visual.shape[1], h.shape[1]
        if length >= n:  # the whole sequence (training, a prefill, or generate without a cache)
            is_visual = F.pad(ctx.is_visual, (0, length - n))  # what follows the prompt is text
            keys = ~is_visual & F.pad(ctx.valid, (0, length - n), value=True)
            ctx.visual[i] = gather_visual(h, is_visual)
            ctx.language[i] = (h, keys)
        else:  # generate's later steps: text, reading the prefill's visual states
            is_visual = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
            before, keys = ctx.language[i]  # and the language states so far, with its own
            keys = torch.cat([keys, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)], 1)
            ctx.language[i] = (torch.cat([before, h], dim=1), keys)
        states, keys = ctx.language[i]  # row r (the last `length` positions) reads keys <= r
        causal = torch.ones(length, keys.shape[1], dtype=torch.bool, device=h.device)
        language = (states, causal.tril(keys.shape[1] - length)[None] & keys[:, None, :])
        visual, aux = ctx.visual[i], (ctx.aux.to(h.dtype), ctx.aux_valid)
        if ctx.sample is not None:  # packed (training: the whole sequence): each sample alone
            s = ctx.sample
            language = (states, language[1] & (s[:, :, None] == s[:, None, :]))
            seen = s.gather(1, visual[2])  # each gathered visual state's sample
            visual = (visual[0], visual[1][:, None, :] & (s[:, :, None] == seen[:, None, :]))
            aux = (aux[0], aux[1][:, None, :] & (s[:, :, None] == ctx.aux_sample))
        mixer = self.mixers[str(i)]
        out = mixer(h, is_visual, visual[:2], language, aux)
        return ((out, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": out})

    # ------------------------------------------------------------------ per call
    def describe(self, model: Any, pixels: Sequence[torch.Tensor | None]) -> list[str]:
        """Each image's auxiliary text (every source, in order)."""
        return [run_sources(self.sources, p, model) for p in pixels]

    def compress(self, model: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Auxiliary texts -> the tokens the mixer reads, (B, N, D), and which exist (B, N):
        the perceiver's `queries` latents over the words, or one token per region."""
        regions = self.compressor_kind == "regions"
        read = region_tokens if regions else word_tokens
        tokens, valid = read(model, texts, self.max_aux_tokens, self.aux_states)
        tokens = tokens + self.aux_positions[: tokens.shape[1]].to(tokens.dtype)
        if regions:
            return tokens, valid
        latents = self.latents.to(tokens.dtype).expand(len(texts), -1, -1)
        out = self.compressor(tokens, latents, valid)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    @contextlib.contextmanager
    def mixing(
        self,
        model: Any,
        input_ids: torch.Tensor,
        texts: Sequence[str],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Mix during the LLM calls inside: `input_ids` (B, L) with placeholder runs (and its
        `attention_mask`: padding is no one's context), one auxiliary text per row; packed
        rows (`position_ids` restarting at each sample): one per sample, in reading order."""
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.bool()
        )
        if position_ids is None and len(texts) != input_ids.shape[0]:
            raise InputError(
                f"moai: expected one auxiliary text per row ({input_ids.shape[0]}), got {len(texts)}"
            )
        starts = valid & (position_ids == 0) if position_ids is not None else valid[:, :1]
        if position_ids is not None and len(texts) != int(starts.sum()):
            raise InputError(
                f"moai: expected one auxiliary text per packed sample ({int(starts.sum())}), "
                f"got {len(texts)}"
            )
        placeholders = torch.tensor(
            list(model.layout.placeholder_ids.values()), device=input_ids.device
        )
        is_visual = torch.isin(input_ids, placeholders)
        aux, aux_valid = self.compress(model, texts)
        if position_ids is None:
            self.context = MixContext(is_visual, valid, aux, aux_valid)
        else:  # each row's samples' aux tokens side by side, each read by its own sample
            self.context = packed_context(is_visual, valid, aux, aux_valid, starts, position_ids)
        try:
            yield
        finally:
            self.context = None


MIXERS.register("moai", MoAI)
