"""The UPM's projection experts: N LLaMA-style blocks each, at the encoder width,
bidirectional, without rotary positions (OneLLM's `resample_layers`), pooled so that one
call runs the experts a modality routes to; and the pool's growth by copying (new
experts for a new modality, sparse upcycling).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm


def llama_ffn_hidden(width: int, multiple_of: int) -> int:
    """LLaMA's FFN size rule: 2/3 of 4 x width, rounded up to a multiple of `multiple_of`."""
    h = int(2 * 4 * width / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class ExpertBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then h + SwiGLU(RMSNorm(h)); no bias, no mask."""

    def __init__(self, *, width: int, num_heads: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"expert width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_norm = LlamaRMSNorm(width, eps=eps)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.mlp_norm = LlamaRMSNorm(width, eps=eps)
        self.gate_proj = nn.Linear(width, ffn_hidden, bias=False)
        self.up_proj = nn.Linear(width, ffn_hidden, bias=False)
        self.down_proj = nn.Linear(ffn_hidden, width, bias=False)

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """(B, L, W) -> (B, rows or L, W): outputs for the first `rows` positions only
        (every position still serves as key and value)."""
        n = self.attn_norm(x)
        q, k, v = (
            rearrange(p(t), "b l (h d) -> b h l d", h=self.num_heads)
            for p, t in ((self.q_proj, n[:, :rows]), (self.k_proj, n), (self.v_proj, n))
        )
        x = x[:, :rows]
        a = F.scaled_dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(d)
        h = x + self.o_proj(rearrange(a, "b h l d -> b l (h d)"))
        n = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(n)) * self.up_proj(n))


class ProjectionExpert(nn.Module):
    """N `ExpertBlock`s in sequence."""

    def __init__(self, *, num_layers: int, **block_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ExpertBlock(**block_kwargs) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ExpertPool(nn.ModuleList):
    """The K projection experts (a `ModuleList` of `ProjectionExpert`s, same keys).

    `forward(z, keep)` runs every expert on the shared input and returns only the first
    `keep` rows of each: the last layer computes its attention outputs and MLP for those
    rows alone, since nothing reads the others (OneLLM computes all Q+S+1 rows there).
    Each expert runs its own `nn.Linear`s: stacking the K experts into one batched matmul
    was measured slower at width 512 (bmm + weight copies, bench/step.py) and only ~9%
    faster at width 64, where attention dominates anyway.
    """

    @classmethod
    def build(cls, count: int, **expert_sizes) -> ExpertPool:
        """`count` new `ProjectionExpert(**expert_sizes)`s (random init)."""
        return cls(ProjectionExpert(**expert_sizes) for _ in range(count))

    def forward(
        self, z: torch.Tensor, keep: int | None = None, experts: list[int] | None = None
    ) -> torch.Tensor:
        """(B, L, W) shared input -> output rows [:keep] of the experts listed (default all):
        (len(experts), B, keep, W)."""
        outs = []
        for index in range(len(self)) if experts is None else experts:
            expert, x = self[index], z
            *first, last = expert.layers
            for layer in first:
                x = layer(x)
            outs.append(last(x, rows=keep))
        return torch.stack(outs)

    @torch.no_grad()
    def grow(
        self,
        count: int,
        *,
        source: int | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Append `count` experts, copies of expert `source` (default: expert i % K for the
        i-th), each weight scaled by 1 + noise x N(0, 1), so that they start from what the
        experts already compute. -> their indices."""
        old = len(self)
        if source is not None and not 0 <= source < old:
            raise ValueError(f"expert to copy must be in 0..{old - 1}, got {source}")
        for i in range(count):
            copied = copy.deepcopy(self[i % old if source is None else source])
            for p in copied.parameters() if noise else ():
                shake = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                p.mul_(1 + noise * shake.to(p.device, p.dtype))
            self.append(copied)
        return list(range(old, old + count))
