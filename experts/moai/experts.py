"""MoAI-Mixer's experts (experts/moai/mixer.py): low-rank attention (MoAI's LoRA attention)
and one decoder layer's cross- and self-attention experts with their gating networks.

The gates start at zero, their softmax uniform: MoAI's first training step trains the
compressor and the experts, its second the gating networks (configs/stages/study_moai*.yaml).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class LowRankAttention(nn.Module):
    """Attention from x (B, L, D) to a context (B, N, D) through `rank` dims; `valid` (B, N),
    or (B, L, N) per row, masks the context. Its output starts at zero; a row with no valid
    context gives zero."""

    def __init__(self, *, width: int, rank: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_x, self.norm_context = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v = (nn.Linear(width, rank, bias=False) for _ in range(3))
        self.out = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        c = self.norm_context(context)
        q = rearrange(self.q(self.norm_x(x)), "b l (h d) -> b h l d", h=self.heads)
        k, v = (rearrange(p(c), "b n (h d) -> b h n d", h=self.heads) for p in (self.k, self.v))
        if valid.dim() == 2:
            valid = valid[:, None, :].expand(-1, x.shape[1], -1)
        some = valid.any(-1, keepdim=True)  # (B, L, 1)
        mask = (valid | ~some)[:, None]  # an empty row attends to anything, then is zeroed
        out = self.out(
            rearrange(
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b h l d -> b l (h d)"
            )
        )
        return out * some.to(out.dtype)


class LayerMixer(nn.Module):
    """One decoder layer's experts and gates."""

    def __init__(self, *, width: int, rank: int, heads: int) -> None:
        super().__init__()
        expert = functools.partial(LowRankAttention, width=width, rank=rank, heads=heads)
        self.visual_aux, self.visual_self = expert(), expert()
        self.language_aux, self.language_visual, self.language_self = expert(), expert(), expert()
        self.gate_visual, self.gate_language = nn.Linear(width, 2), nn.Linear(width, 3)
        for gate in (self.gate_visual, self.gate_language):  # uniform until step 2 trains them
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)

    def forward(
        self,
        h: torch.Tensor,
        is_visual: torch.Tensor,
        visual: tuple[torch.Tensor, ...],
        language: tuple[torch.Tensor, ...],
        aux: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """h (B, L, D); `visual`: the visual states (B, Nv, D) and valid (B, Nv) or (B, L, Nv);
        `language`: the language states so far (B, Nt, D) and which each row may read
        (B, L, Nt); `aux`: the compressed aux tokens (B, N, D) and valid (B, N) or (B, L, N)."""
        aux, aux_valid = aux
        gv, gl = self.gate_visual(h).softmax(-1), self.gate_language(h).softmax(-1)
        mix_v = gv[..., :1] * self.visual_aux(h, aux, aux_valid)
        mix_v = mix_v + gv[..., 1:] * self.visual_self(h, *visual)
        mix_l = gl[..., :1] * self.language_aux(h, aux, aux_valid)
        mix_l = mix_l + gl[..., 1:2] * self.language_visual(h, *visual)
        mix_l = mix_l + gl[..., 2:] * self.language_self(h, *language)
        return h + torch.where(is_visual[..., None], mix_v, mix_l).to(h.dtype)
