"""Routers: per-modality weights over the K projection experts, one row per query token.

All share OneLLM's router MLP (W -> hidden -> K, exact-erf GELU) except `constant`.
`soft` is OneLLM's: sigmoid, then normalised over experts (not softmax). The sparse ones
choose some experts per token from those soft weights and renormalise over the chosen:

- `topk` (k): the k largest; `topk` with k = K is `soft`;
- `top_p` (p): dynamic (Huang et al. 2024; Uni-MoE-2.0's DCMoE): the fewest experts,
  largest first, whose soft weights sum to at least p.

Both take `noise` (noisy gating: N(0, noise^2) added to the logits while training, before
the choice; the soft weights the MoE losses read are the noiseless ones) and
`capacity_factor` (GShard / Switch): while training, each expert takes at most
ceil(capacity_factor x assignments / K) of a call's (query, expert) assignments, first come
first served in (batch, query) order; the rest are dropped, the query's kept weights are
renormalised (DeepSpeed's top-2 does the same), and a query with none kept passes through
(`Routing.passed`: the projection gives it the experts' residual stream, no expert's update).
At inference nothing is dropped, so a reply never depends on what else is in its batch.

`forward(x)` gives the weights alone (what the output heads mix with); `route(x)` the
whole `Routing`, which the projection uses and the MoE losses read (onellm/training/moe.py).
"""

from __future__ import annotations

import torch
from torch import nn

from onellm.modeling.projection import Routing
from onellm.registry import ROUTERS


class RouterMLP(nn.Module):
    """OneLLM's `Mlp`: fc1 -> GELU (erf) -> fc2 (one output row per expert)."""

    def __init__(self, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def normalised_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    w = logits.sigmoid()
    return w / w.sum(dim=-1, keepdim=True)


def dense(probs: torch.Tensor, logits: torch.Tensor | None) -> Routing:
    """Every token to every expert with its soft weight (soft and constant routing)."""
    every = torch.ones_like(probs, dtype=torch.bool)
    return Routing(probs, probs, logits, every, torch.zeros_like(every))


class SoftRouter(nn.Module):
    """(B, Q, W) -> (B, Q, K) weights: sigmoid, normalised to sum 1 over experts."""

    def __init__(self, *, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.mlp = RouterMLP(width, hidden, num_experts)

    def route(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        logits = self.mlp(x)
        return dense(normalised_sigmoid(logits), logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x).weights


class SparseRouter(SoftRouter):
    """Soft weights, some experts chosen per token (`choose`), capacity, renormalised."""

    def __init__(
        self,
        *,
        width: int,
        hidden: int,
        num_experts: int,
        noise: float = 0.0,
        capacity_factor: float | None = None,
    ) -> None:
        super().__init__(width=width, hidden=hidden, num_experts=num_experts)
        if noise < 0:
            raise ValueError(f"router: noise must be >= 0, got {noise}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"router: capacity_factor must be > 0, got {capacity_factor}")
        self.noise, self.capacity_factor = noise, capacity_factor

    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, Q, K) soft weights -> (B, Q, K) bool: the experts each token goes to."""
        raise NotImplementedError

    def route(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        logits = self.mlp(x)
        if noise is None and self.noise and self.training:
            noise = torch.randn_like(logits) * self.noise
        probs = normalised_sigmoid(logits)
        gated = probs if noise is None else normalised_sigmoid(logits + noise)
        chosen = self.choose(gated)
        factor = self.capacity_factor if self.training else None
        dropped = over_capacity(chosen, factor)
        kept = gated * (chosen & ~dropped)
        total = kept.sum(-1, keepdim=True)
        weights = kept / torch.where(total > 0, total, torch.ones_like(total))  # passed: all 0
        return Routing(weights, probs, logits, chosen, dropped, noise)


def over_capacity(chosen: torch.Tensor, factor: float | None) -> torch.Tensor:
    """(B, Q, K) bool assignments -> those past each expert's capacity, first come first
    served in (batch, query) order: ceil(factor x assignments / K) per expert."""
    if factor is None:
        return torch.zeros_like(chosen)
    flat = chosen.reshape(-1, chosen.shape[-1])
    capacity = torch.ceil(factor * flat.sum() / flat.shape[-1])  # a tensor: no host sync
    position = flat.long().cumsum(0)  # the 1-based place of each assignment in its expert
    return (flat & (position > capacity)).reshape(chosen.shape)


class TopKRouter(SparseRouter):
    """The k largest soft weights per token, renormalised (the rest exactly zero)."""

    def __init__(
        self,
        *,
        width: int,
        hidden: int,
        num_experts: int,
        k: int = 1,
        noise: float = 0.0,
        capacity_factor: float | None = None,
    ) -> None:
        super().__init__(
            width=width,
            hidden=hidden,
            num_experts=num_experts,
            noise=noise,
            capacity_factor=capacity_factor,
        )
        if not 1 <= k <= num_experts:
            raise ValueError(f"router topk: k must be in 1..{num_experts}, got {k}")
        self.k = k

    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        top = probs.topk(self.k, dim=-1).indices
        return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)


class TopPRouter(SparseRouter):
    """The fewest experts (largest first) whose soft weights sum to at least p."""

    def __init__(
        self,
        *,
        width: int,
        hidden: int,
        num_experts: int,
        p: float = 0.5,
        noise: float = 0.0,
        capacity_factor: float | None = None,
    ) -> None:
        super().__init__(
            width=width,
            hidden=hidden,
            num_experts=num_experts,
            noise=noise,
            capacity_factor=capacity_factor,
        )
        if not 0 < p <= 1:
            raise ValueError(f"router top_p: p must be in (0, 1], got {p}")
        self.p = p

    def choose(self, probs: torch.Tensor) -> torch.Tensor:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # the mass of the larger ones
        # an expert is needed while the mass before it is short of p (1e-6: float sums)
        keep = before < self.p - 1e-6
        return torch.zeros_like(keep).scatter(-1, order, keep)


class ConstantRouter(nn.Module):
    """Every expert weighted 1/K (no parameters): the dense-average baseline."""

    def __init__(self, *, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def route(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        return dense(x.new_full((*x.shape[:-1], self.num_experts), 1.0 / self.num_experts), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x).weights


@torch.no_grad()
def transplant(
    old: nn.Module,
    new: nn.Module,
    rows: list[int],
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> None:
    """Load `old` router's MLP into `new`, whose expert j takes old expert `rows[j]`'s output
    row (a row repeated: an upcycled copy, scaled by 1 + noise x N(0, 1) entrywise). A
    router without an MLP on either side keeps `new`'s own initialisation."""
    if not (hasattr(old, "mlp") and hasattr(new, "mlp")):
        return
    new.mlp.fc1.load_state_dict(old.mlp.fc1.state_dict())
    seen: set[int] = set()
    for j, r in enumerate(rows):
        for name in ("weight", "bias"):
            row = getattr(old.mlp.fc2, name)[r]
            if r in seen and noise:  # a copy: break the tie with its original
                shake = torch.randn(row.shape, generator=generator, dtype=torch.float32)
                row = row * (1 + noise * shake.to(row.device, row.dtype))
            getattr(new.mlp.fc2, name)[j] = row
        seen.add(r)


ROUTERS.register("soft", SoftRouter)
ROUTERS.register("topk", TopKRouter)
ROUTERS.register("top_p", TopPRouter)
ROUTERS.register("constant", ConstantRouter)
