"""The parts of an upcycled MoE layer in the LLM (experts/llm/moe_layers.py): its router
(a linear gate per layer, or per modality) and the layer (the dense MLP's copies, top-k
routed, an optional shared expert).

Routing (Switch / MoE-LLaVA / Mixtral): softmax of a linear gate over E experts, the k
largest kept and renormalised to sum 1. While training only: `gate_noise` (N(0, s^2) on the
logits before the choice) and capacity (each expert takes at most ceil(capacity x N x k / E)
of a call's N positions' assignments, first come first served in (batch, position) order,
as DeepSpeed's top-2 gate counts; the rest are dropped and the position's kept weights
renormalised; a position with none kept gets no MLP update, only its residual).
At inference nothing is dropped and there is no noise: a position's experts then depend
only on its own hidden state and modality, so a cached step routes as the whole sequence
does and a row routes alone as in any batch (capacity would make one row's experts depend
on what else is in the batch, and a cached step sees only its newest positions).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from onellm.experts.projection.routers import over_capacity
from onellm.modeling.projection import Routing


class LayerRouter(nn.Module):
    """(N, D) positions and their groups (N,) -> a `Routing` over E experts. `gates[name]`:
    one linear gate (`shared`: every position reads `gates["all"]`) or one per group name
    (`per_modality`, Ming-Omni's: each position reads its modality's)."""

    def __init__(
        self,
        *,
        width: int,
        experts: int,
        k: int,
        names: Sequence[str],
        per_modality: bool,
        gate_noise: float = 0.0,
        capacity: float | None = None,
    ) -> None:
        super().__init__()
        self.experts, self.k, self.per_modality = experts, k, per_modality
        self.gate_noise, self.capacity = gate_noise, capacity
        keys = list(names) if per_modality else ["all"]
        self.gates = nn.ModuleDict({n: nn.Linear(width, experts, bias=False) for n in keys})

    def logits(self, x: torch.Tensor, groups: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """(N, D), (N,) indices into `names` -> (N, E) each position's gate's logits."""
        if not self.per_modality:
            return self.gates["all"](x)
        out = x.new_zeros(x.shape[0], self.experts)
        for i, name in enumerate(names):
            at = (groups == i).nonzero().squeeze(1)
            if at.numel():  # an absent modality's gate gets no gradient (AdamW leaves it be)
                out = out.index_copy(0, at, self.gates[name](x[at]))
        return out

    def route(
        self,
        x: torch.Tensor,
        groups: torch.Tensor,
        names: Sequence[str],
        noise: torch.Tensor | None = None,
    ) -> Routing:
        logits = self.logits(x, groups, names)
        if noise is None and self.gate_noise and self.training:
            noise = torch.randn_like(logits) * self.gate_noise
        probs = logits.float().softmax(-1)
        gated = probs if noise is None else (logits + noise).float().softmax(-1)
        top = gated.topk(self.k, dim=-1).indices
        chosen = torch.zeros_like(gated, dtype=torch.bool).scatter(-1, top, True)
        dropped = over_capacity(chosen, self.capacity if self.training else None)
        kept = gated * (chosen & ~dropped)
        total = kept.sum(-1, keepdim=True)
        weights = kept / torch.where(total > 0, total, torch.ones_like(total))
        return Routing(weights, probs, logits, chosen, dropped, noise)


@dataclass
class BoundRouter:
    """A layer router bound to one call's groups: `route(x, noise)` as the MoE losses call
    it (onellm/training/moe.py) gives that call's routing again."""

    router: LayerRouter
    groups: torch.Tensor
    names: Sequence[str]

    def route(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        return self.router.route(x, self.groups, self.names, noise)


@torch.no_grad()
def upcycled(
    mlp: nn.Module, count: int, *, noise: float, generator: torch.Generator
) -> nn.ModuleList:
    """`count` copies of the dense `mlp` (MoE-LLaVA's upcycling): the first exact, each
    other weight scaled by 1 + noise x N(0, 1) entrywise (relative, as the UPM's upcycling)."""
    copies = nn.ModuleList(copy.deepcopy(mlp) for _ in range(count))
    for c in list(copies)[1:]:
        for p in c.parameters():
            shake = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.mul_(1 + noise * shake.to(p.device, p.dtype))
    return copies


class MoEMLP(nn.Module):
    """One upcycled layer: (N, D) positions and their groups (N,) -> (N, D). Each expert
    runs on the positions routed to it (every expert runs, on no rows if none, so that
    sharded experts would gather on every process alike); `shared`: one more copy every position uses,
    the output then the mean of the shared expert's and the routed mix (so that, upcycled
    at noise 0, the layer still computes the dense MLP)."""

    def __init__(self, experts: nn.ModuleList, router: LayerRouter, shared: nn.Module | None):
        super().__init__()
        self.experts, self.router, self.shared = experts, router, shared

    def forward(
        self, x: torch.Tensor, groups: torch.Tensor, names: Sequence[str]
    ) -> tuple[torch.Tensor, Routing]:
        """-> the output (N, D) and the `Routing` over the N positions."""
        routing = self.router.route(x, groups, names)
        kept = routing.chosen & ~routing.dropped
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = kept[:, e].nonzero().squeeze(1)
            y = expert(x[rows]) * routing.weights[rows, e, None].to(x.dtype)
            out = out.index_add(0, rows, y)
        if self.shared is not None:
            out = (self.shared(x) + out) / 2
        return out, routing
