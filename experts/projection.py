"""The universal projection module (UPM): routed projection experts with per-modality queries.

For modality m with encoder features f (B, S+1, W):
    z = [queries_m ; in_proj_m(f)]                      (B, Q+S+1, W)
    w = router_m(z[:, :Q])                              (B, Q, K)
    y = sum_k w[..., k] * Expert_k(z)[:, :Q]            (B, Q, W)
    out = out_proj_m(y)                                 (B, Q, D)   D = LLM width
Each expert is N LLaMA-style blocks at the encoder width, bidirectional, without rotary
positions (OneLLM's `resample_layers`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from experts.routers import ROUTERS


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


def _in_out(width_in: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width_out), nn.LayerNorm(width_out))


class UniversalProjection(nn.Module):
    """Shared experts plus, per modality: queries, router, in/out projections, start/end tags."""

    def __init__(
        self,
        *,
        width: int,
        llm_width: int,
        num_experts: int,
        layers_per_expert: int,
        num_heads: int,
        num_queries: int,
        ffn_hidden: int,
        router_hidden: int,
        router: dict,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width, self.llm_width, self.num_queries = width, llm_width, num_queries
        self.router_hidden, self.router_spec = router_hidden, dict(router)
        self.experts = ExpertPool(
            ProjectionExpert(
                num_layers=layers_per_expert,
                width=width,
                num_heads=num_heads,
                ffn_hidden=ffn_hidden,
                eps=norm_eps,
            )
            for _ in range(num_experts)
        )
        self.queries = nn.ParameterDict()
        self.routers = nn.ModuleDict()
        self.in_proj = nn.ModuleDict()
        self.out_proj = nn.ModuleDict()
        self.start_tag = nn.ParameterDict()
        self.end_tag = nn.ParameterDict()
        # the experts each modality's router weighs (default: all); an expert added later is
        # not in the earlier modalities' lists, so they give it exactly zero weight
        self.routes: dict[str, list[int]] = {}

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def add_experts(self, count: int) -> list[int]:
        """Append `count` experts, each a copy of an existing one (expert i % K), so a new
        modality starts from what the experts already compute. -> their indices."""
        old = self.num_experts
        for i in range(count):
            self.experts.append(copy.deepcopy(self.experts[i % old]))
        return list(range(old, old + count))

    def add_modality(
        self, name: str, *, output_scale: float = 1.0, experts: list[int] | None = None
    ) -> None:
        """Create modality `name`'s queries, router, projections and tags (random init).

        `output_scale`: the RMS of the LLM's word embeddings. The output LayerNorm's gain
        and the tags start at that scale, so modality tokens enter the LLM at the size its
        own tokens have (OneLLM starts at gain 1: ~40x larger, which a tiny LLM cannot absorb).
        `experts`: the expert indices its router weighs (default: all there are now).
        """
        spec = dict(self.router_spec)
        kind = spec.pop("type", "soft")
        routes = list(range(self.num_experts)) if experts is None else list(experts)
        if not routes or any(not 0 <= e < self.num_experts for e in routes):
            raise ValueError(
                f"{name}: expert indices must be in 0..{self.num_experts - 1}, got {routes}"
            )
        self.routes[name] = routes
        self.queries[name] = nn.Parameter(torch.randn(1, self.num_queries, self.width) * 0.02)
        self.routers[name] = ROUTERS.build(
            kind, width=self.width, hidden=self.router_hidden, num_experts=len(routes), **spec
        )
        self.in_proj[name] = _in_out(self.width, self.width)
        self.out_proj[name] = _in_out(self.width, self.llm_width)
        with torch.no_grad():
            self.out_proj[name][1].weight.fill_(output_scale)
        self.start_tag[name] = nn.Parameter(torch.randn(1, 1, self.llm_width) * output_scale)
        self.end_tag[name] = nn.Parameter(torch.randn(1, 1, self.llm_width) * output_scale)

    def route(self, features: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S+1, W) -> the expert input z (B, Q+S+1, W) and routing weights (B, Q, K_m)
        over the modality's experts `routes[modality]`."""
        f = self.in_proj[modality](features)
        q = self.queries[modality].to(f.dtype).expand(f.shape[0], -1, -1)
        z = torch.cat([q, f], dim=1)
        # only the query rows are kept, so the router runs on those alone
        return z, self.routers[modality](z[:, : self.num_queries])

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, S+1, W) encoder features -> (B, Q, D) tokens for the LLM."""
        z, weights = self.route(features, modality)
        q = self.num_queries
        outs = self.experts(z, keep=q, experts=self.routes[modality])
        y = torch.einsum("kbqw,bqk->bqw", outs, weights.to(z.dtype))
        return self.out_proj[modality](y)

    def full_weights(self, weights: torch.Tensor, modality: str) -> torch.Tensor:
        """(..., K_m) weights over the modality's experts -> (..., K) over all, zeros elsewhere."""
        full = weights.new_zeros(*weights.shape[:-1], self.num_experts)
        full[..., self.routes[modality]] = weights
        return full
