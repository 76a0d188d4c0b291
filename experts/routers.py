"""Routers: per-modality weights over the K projection experts, one row per query token.

All share OneLLM's router MLP (W -> hidden -> K, exact-erf GELU) except `constant`.
`soft` is OneLLM's: sigmoid, then normalised over experts (not softmax). `topk` keeps
the k largest soft weights per token and renormalises, so `topk` with k = K is `soft`.
"""

from __future__ import annotations

import torch
from torch import nn

from onellm.registry import Registry

ROUTERS: Registry[type] = Registry("router")


class RouterMLP(nn.Module):
    """OneLLM's `Mlp`: fc1 -> GELU (erf) -> fc2."""

    def __init__(self, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SoftRouter(nn.Module):
    """(B, Q, W) -> (B, Q, K) weights: sigmoid, normalised to sum 1 over experts."""

    def __init__(self, *, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.mlp = RouterMLP(width, hidden, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.mlp(x).sigmoid()
        return w / w.sum(dim=-1, keepdim=True)


class TopKRouter(SoftRouter):
    """Soft weights with all but the k largest per token set to exactly zero, renormalised."""

    def __init__(self, *, width: int, hidden: int, num_experts: int, k: int = 1) -> None:
        super().__init__(width=width, hidden=hidden, num_experts=num_experts)
        if not 1 <= k <= num_experts:
            raise ValueError(f"router topk: k must be in 1..{num_experts}, got {k}")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = super().forward(x)
        top = w.topk(self.k, dim=-1)
        sparse = torch.zeros_like(w).scatter(-1, top.indices, top.values)
        return sparse / sparse.sum(dim=-1, keepdim=True)


class ConstantRouter(nn.Module):
    """Every expert weighted 1/K (no parameters): the dense-average baseline."""

    def __init__(self, *, width: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((*x.shape[:-1], self.num_experts), 1.0 / self.num_experts)


ROUTERS.register("soft", SoftRouter)
ROUTERS.register("topk", TopKRouter)
ROUTERS.register("constant", ConstantRouter)
