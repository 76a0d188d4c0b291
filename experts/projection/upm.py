"""The universal projection module (UPM): routed projection experts with per-modality queries.

For modality m with encoder features f (B, S+1, W):
    z = [queries_m ; in_proj_m(f)]                      (B, Q+S+1, W)
    w = router_m(z[:, :Q])                              (B, Q, K)
    y = sum_k w[..., k] * Expert_k(z)[:, :Q]            (B, Q, W)
    out = out_proj_m(y)                                 (B, Q, D)   D = LLM width
Each expert is N LLaMA-style blocks at the encoder width, bidirectional, without rotary
positions (OneLLM's `resample_layers`, upm_experts.py). The router reads the query rows,
which are the modality's learned queries: routing depends on the modality and the query
slot, not on the input (as in OneLLM).

Beyond OneLLM (routers.py for the sparse routers): a query a capacity-bound router
dropped from every expert passes through as z[:, q], the residual stream every expert adds
its update to; `router: {shared: n}` adds n shared experts every modality always uses,
whose updates E_s(z) - z are added to the routed mix (DeepSeekMoE's shared experts); and
`upcycle` turns trained experts into more experts (sparse upcycling, MoE-LLaVA / CuMo).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from onellm.config import ProjectionConfig
from onellm.errors import ConfigError
from onellm.experts.projection.upm_experts import ExpertPool, llama_ffn_hidden
from onellm.experts.projection.upm_routers import ModalityRouters, chosen_experts
from onellm.modeling.projection import Routing
from onellm.registry import PROJECTIONS


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
        block = dict(width=width, num_heads=num_heads, ffn_hidden=ffn_hidden, eps=norm_eps)
        self.experts = ExpertPool.build(num_experts, num_layers=layers_per_expert, **block)
        # experts every modality uses beside its routed ones (none by default: OneLLM's UPM)
        self.shared = ExpertPool.build(
            router.get("shared", 0), num_layers=layers_per_expert, **block
        )
        self.queries = nn.ParameterDict()
        self.routers = ModalityRouters(width=width, hidden=router_hidden, spec=router)
        self.in_proj, self.out_proj = nn.ModuleDict(), nn.ModuleDict()
        self.start_tag, self.end_tag = nn.ParameterDict(), nn.ParameterDict()
        # called with (modality, router input, Routing) on every routing (onellm/training/moe.py)
        self.recorder: Callable[[str, torch.Tensor, Routing], None] | None = None

    reads_frames = False  # frames are mean-pooled before it (onellm/modeling/modality_blocks.py)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def routes(self) -> dict[str, list[int]]:  # modality -> the experts its router weighs
        return self.routers.routes

    @property
    def router_spec(self) -> dict:  # the routers' `{type: ..., **options}`
        return self.routers.spec

    def num_tokens(self, modality: str) -> int:
        """The tokens a modality's input becomes: its queries."""
        return self.num_queries

    def blocks(self) -> list[nn.Module]:
        """The heavy blocks (checkpointed, sharded): every expert's layers, each called alone."""
        return [layer for pool in (self.experts, self.shared) for e in pool for layer in e.layers]

    def build_router(self, count: int, spec: dict | None = None) -> nn.Module:
        """A router of kind `spec` (default the projection's) over `count` experts."""
        return self.routers.build(count, spec)

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
        routes = chosen_experts(name, experts, self.num_experts)
        self.queries[name] = nn.Parameter(torch.randn(1, self.num_queries, self.width) * 0.02)
        self.routers.add(name, routes)
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
        return self.routers.full(weights, modality, self.num_experts)

    # ------------------------------------------------------------------ more experts
    def add_experts(
        self,
        count: int,
        *,
        source: int | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Append `count` experts, copies (`ExpertPool.grow`: of expert `source`, shaken by
        `noise`), so that a new modality starts from what the experts already compute. No
        existing modality routes to them. -> their indices."""
        return self.experts.grow(count, source=source, noise=noise, generator=generator)

    def upcycle(
        self, sources: list[int], *, noise: float = 0.0, generator: torch.Generator | None = None
    ) -> list[int]:
        """Sparse upcycling: one new expert per entry of `sources`, a copy of that expert
        (see `add_experts`). Every modality that routes to a source also routes to its copy,
        the copy's router row a copy of the source's (same noise). With noise 0 a soft
        router that sees every expert copied equally gives the same outputs. -> indices."""
        new = [self.add_experts(1, source=s, noise=noise, generator=generator)[0] for s in sources]
        self.routers.upcycle(new, sources, self.queries, noise=noise, generator=generator)
        return new

    def set_router(self, spec: dict) -> None:
        """Every modality's router becomes kind `spec` (`{type: topk, k: 2, ...}`), keeping
        its MLP (all routers but `constant` share OneLLM's). Shared experts stay as built."""
        self.routers.respec(spec, self.num_experts, self.queries)


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
