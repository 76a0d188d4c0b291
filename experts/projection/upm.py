"""The universal projection module (UPM): routed projection experts with per-modality queries.

For modality m with encoder features f (B, S+1, W):
    z = [queries_m ; in_proj_m(f)]                      (B, Q+S+1, W)
    w = router_m(z[:, :Q])                              (B, Q, K)
    y = sum_k w[..., k] * Expert_k(z)[:, :Q]            (B, Q, W)
    out = out_proj_m(y)                                 (B, Q, D)   D = LLM width
Each expert is N LLaMA-style blocks at the encoder width, bidirectional, without rotary
positions (OneLLM's `resample_layers`). The router reads the query rows, which are the
modality's learned queries: routing depends on the modality and the query slot, not on
the input (as in OneLLM).

Beyond OneLLM (experts/routers.py for the sparse routers): a query a capacity-bound router
dropped from every expert passes through as z[:, q], the residual stream every expert adds
its update to; `router: {shared: n}` adds n shared experts every modality always uses,
whose updates E_s(z) - z are added to the routed mix (DeepSeekMoE's shared experts); and
`upcycle` turns trained experts into more experts (sparse upcycling, MoE-LLaVA / CuMo).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from onellm.experts.projection.routers import Routing, transplant
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from onellm.config import ProjectionConfig
from onellm.errors import ConfigError
from onellm.registry import PROJECTIONS, ROUTERS


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
        block = dict(
            num_layers=layers_per_expert,
            width=width,
            num_heads=num_heads,
            ffn_hidden=ffn_hidden,
            eps=norm_eps,
        )
        self.experts = ExpertPool(ProjectionExpert(**block) for _ in range(num_experts))
        # experts every modality uses beside its routed ones (none by default: OneLLM's UPM)
        self.shared = ExpertPool(ProjectionExpert(**block) for _ in range(router.get("shared", 0)))
        self.queries = nn.ParameterDict()
        self.routers = nn.ModuleDict()
        self.in_proj = nn.ModuleDict()
        self.out_proj = nn.ModuleDict()
        self.start_tag = nn.ParameterDict()
        self.end_tag = nn.ParameterDict()
        # the experts each modality's router weighs (default: all); an expert added later is
        # not in the earlier modalities' lists, so they give it exactly zero weight
        self.routes: dict[str, list[int]] = {}
        # called with (modality, router input, Routing) on every routing (onellm/moe.py)
        self.recorder: Callable[[str, torch.Tensor, Routing], None] | None = None

    reads_frames = False  # frames are mean-pooled before it (experts/projections.py)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def num_tokens(self, modality: str) -> int:
        """The tokens a modality's input becomes: its queries."""
        return self.num_queries

    def blocks(self) -> list[nn.Module]:
        """The heavy blocks (checkpointed, sharded): every expert's layers, each called alone."""
        return [layer for pool in (self.experts, self.shared) for e in pool for layer in e.layers]

    def build_router(self, count: int, spec: dict | None = None) -> nn.Module:
        """A router of kind `spec` (default the projection's) over `count` experts."""
        spec = dict(self.router_spec if spec is None else spec)
        kind = spec.pop("type", "soft")
        spec.pop("shared", None)  # the projection's, not the router's
        return ROUTERS.build(
            kind, width=self.width, hidden=self.router_hidden, num_experts=count, **spec
        )

    def add_modality(
        self,
        name: str,
        *,
        output_scale: float = 1.0,
        experts: list[int] | None = None,
        tokens_in: int | None = None,
    ) -> None:
        """Create modality `name`'s queries, router, projections and tags (random init).

        `output_scale`: the RMS of the LLM's word embeddings. The output LayerNorm's gain
        and the tags start at that scale, so modality tokens enter the LLM at the size its
        own tokens have (OneLLM starts at gain 1: ~40x larger, which a tiny LLM cannot absorb).
        `experts`: the expert indices its router weighs (default: all there are now).
        `tokens_in` (the encoder's S+1) is every projection kind's argument; queries ignore it.
        """
        routes = list(range(self.num_experts)) if experts is None else list(experts)
        if not routes or any(not 0 <= e < self.num_experts for e in routes):
            raise ValueError(
                f"{name}: expert indices must be in 0..{self.num_experts - 1}, got {routes}"
            )
        self.routes[name] = routes
        self.queries[name] = nn.Parameter(torch.randn(1, self.num_queries, self.width) * 0.02)
        self.routers[name] = self.build_router(len(routes))
        self.in_proj[name] = _in_out(self.width, self.width)
        self.out_proj[name] = _in_out(self.width, self.llm_width)
        with torch.no_grad():
            self.out_proj[name][1].weight.fill_(output_scale)
        self.start_tag[name] = nn.Parameter(torch.randn(1, 1, self.llm_width) * output_scale)
        self.end_tag[name] = nn.Parameter(torch.randn(1, 1, self.llm_width) * output_scale)

    def routing(self, features: torch.Tensor, modality: str) -> tuple[torch.Tensor, Routing]:
        """(B, S+1, W) -> the expert input z (B, Q+S+1, W) and the `Routing` of its Q query
        rows over the modality's experts `routes[modality]` (B, Q, K_m)."""
        f = self.in_proj[modality](features)
        q = self.queries[modality].to(f.dtype).expand(f.shape[0], -1, -1)
        z = torch.cat([q, f], dim=1)
        # only the query rows are kept, so the router runs on those alone
        routing = self.routers[modality].route(z[:, : self.num_queries])
        if self.recorder is not None:  # q: the same values, a graph the MoE losses can revisit
            self.recorder(modality, q, routing)
        return z, routing

    def route(self, features: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`routing`, with the routing weights (B, Q, K_m) alone."""
        z, routing = self.routing(features, modality)
        return z, routing.weights

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, S+1, W) encoder features -> (B, Q, D) tokens for the LLM."""
        z, routing = self.routing(features, modality)
        q = self.num_queries
        outs = self.experts(z, keep=q, experts=self.routes[modality])
        y = torch.einsum("kbqw,bqk->bqw", outs, routing.weights.to(z.dtype))
        y = torch.where(routing.passed[..., None], z[:, :q].to(y.dtype), y)  # dropped: residual
        if len(self.shared):
            y = y + (self.shared(z, keep=q) - z[:, :q]).sum(0)
        return self.out_proj[modality](y)

    def full_weights(self, weights: torch.Tensor, modality: str) -> torch.Tensor:
        """(..., K_m) weights over the modality's experts -> (..., K) over all, zeros elsewhere."""
        full = weights.new_zeros(*weights.shape[:-1], self.num_experts)
        full[..., self.routes[modality]] = weights
        return full

    # ------------------------------------------------------------------ more experts
    @torch.no_grad()
    def add_experts(
        self,
        count: int,
        *,
        source: int | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Append `count` experts, copies of expert `source` (default: expert i % K for the
        i-th), each weight scaled by 1 + noise x N(0, 1), so that a new modality starts from
        what the experts already compute. No existing modality routes to them. -> indices."""
        old = self.num_experts
        if source is not None and not 0 <= source < old:
            raise ValueError(f"expert to copy must be in 0..{old - 1}, got {source}")
        for i in range(count):
            copied = copy.deepcopy(self.experts[i % old if source is None else source])
            for p in copied.parameters() if noise else ():
                shake = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                p.mul_(1 + noise * shake.to(p.device, p.dtype))
            self.experts.append(copied)
        return list(range(old, old + count))

    def upcycle(
        self, sources: list[int], *, noise: float = 0.0, generator: torch.Generator | None = None
    ) -> list[int]:
        """Sparse upcycling: one new expert per entry of `sources`, a copy of that expert
        (see `add_experts`). Every modality that routes to a source also routes to its copy,
        the copy's router row a copy of the source's (same noise). With noise 0 a soft
        router that sees every expert copied equally gives the same outputs. -> indices."""
        new = [self.add_experts(1, source=s, noise=noise, generator=generator)[0] for s in sources]
        for m, routes in self.routes.items():
            grown = [(j, routes.index(s)) for j, s in zip(new, sources, strict=True) if s in routes]
            if grown:
                self.routes[m] = routes + [j for j, _ in grown]
                rows = list(range(len(routes))) + [r for _, r in grown]
                self._rebuild_router(m, rows, noise=noise, generator=generator)
        return new

    def set_router(self, spec: dict) -> None:
        """Every modality's router becomes kind `spec` (`{type: topk, k: 2, ...}`), keeping
        its MLP (all routers but `constant` share OneLLM's). Shared experts stay as built."""
        if spec.get("shared", 0) != self.router_spec.get("shared", 0):
            raise ValueError(
                f"router.shared: shared experts are fixed when the model is built "
                f"({self.router_spec.get('shared', 0)}), got {spec.get('shared', 0)}"
            )
        self.build_router(self.num_experts, spec)  # a bad spec fails before anything changes
        self.router_spec = dict(spec)
        for m, routes in self.routes.items():
            self._rebuild_router(m, list(range(len(routes))))

    def _rebuild_router(self, modality: str, rows: list[int], **shake) -> None:
        """Modality's router rebuilt over len(rows) experts, expert j from old row rows[j]."""
        old = self.routers[modality]
        new = self.build_router(len(rows))
        transplant(old, new, rows, **shake)
        like = next(old.parameters(), self.queries[modality])
        new.to(like.device, like.dtype).train(old.training)
        new.requires_grad_(like.requires_grad)
        self.routers[modality] = new


def build_upm(
    p: ProjectionConfig, *, width: int, llm_width: int, options: dict, where: str
) -> UniversalProjection:
    """The UPM from the projection's own fields (`num_experts`, `layers_per_expert`, ...)."""
    if options:
        raise ConfigError(
            f"{where}: the upm takes the projection's own fields, got {sorted(options)}"
        )
    return UniversalProjection(
        width=width,
        llm_width=llm_width,
        num_experts=p.num_experts,
        layers_per_expert=p.layers_per_expert,
        num_heads=p.num_heads,
        num_queries=p.num_queries,
        ffn_hidden=p.ffn_hidden_size or llama_ffn_hidden(width, p.multiple_of),
        router_hidden=p.router_hidden_size or 4 * width,
        router=p.router,
        norm_eps=p.norm_eps,
    )


PROJECTIONS.register("upm", build_upm)
