"""The UPM's routing bookkeeping: each modality's router and the experts it weighs, all of
one kind, rebuilt when the experts are upcycled or the kind changes, keeping what each
router learned (its MLP, `transplant`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from onellm.experts.projection.routers import transplant
from onellm.registry import ROUTERS


def chosen_experts(modality: str, experts: list[int] | None, count: int) -> list[int]:
    """The experts a new modality's router weighs: `experts`, checked, or all `count`."""
    routes = list(range(count)) if experts is None else list(experts)
    if not routes or any(not 0 <= e < count for e in routes):
        raise ValueError(f"{modality}: expert indices must be in 0..{count - 1}, got {routes}")
    return routes


class ModalityRouters(nn.ModuleDict):
    """`routers.<modality>` (OneLLM's keys): each modality's router, of the kind `spec`
    (`{type: soft | topk | ..., **options}`; its `shared` is the projection's), over the
    experts `routes[modality]` (default all; an expert added later is not in the earlier
    modalities' lists, so they give it exactly zero weight).

    `like[modality]` (the modality's queries) gives a router built where the old one had
    no parameters (`constant`) its device, dtype and trainability."""

    def __init__(self, *, width: int, hidden: int, spec: dict) -> None:
        super().__init__()
        self._width, self._hidden, self.spec = width, hidden, dict(spec)
        self.routes: dict[str, list[int]] = {}

    def build(self, count: int, spec: dict | None = None) -> nn.Module:
        """A router of kind `spec` (default `self.spec`) over `count` experts."""
        spec = dict(self.spec if spec is None else spec)
        kind = spec.pop("type", "soft")
        spec.pop("shared", None)  # the projection's, not the router's
        return ROUTERS.build(
            kind, width=self._width, hidden=self._hidden, num_experts=count, **spec
        )

    def add(self, modality: str, routes: list[int]) -> None:
        """A new modality's router over the experts `routes` (random init)."""
        self.routes[modality] = routes
        self[modality] = self.build(len(routes))

    def full(self, weights: torch.Tensor, modality: str, count: int) -> torch.Tensor:
        """(..., K_m) weights over the modality's experts -> (..., count) over all, 0 elsewhere."""
        full = weights.new_zeros(*weights.shape[:-1], count)
        full[..., self.routes[modality]] = weights
        return full

    def upcycle(
        self, new: list[int], sources: list[int], like: Mapping[str, torch.Tensor], **shake
    ) -> None:
        """Experts `new` are copies of `sources`: every modality that routes to a source
        also routes to its copy, the copy's router row a copy of the source's (`shake`:
        `noise` and `generator`, as the experts were)."""
        for m, routes in self.routes.items():
            grown = [(j, routes.index(s)) for j, s in zip(new, sources, strict=True) if s in routes]
            if grown:
                self.routes[m] = routes + [j for j, _ in grown]
                rows = list(range(len(routes))) + [r for _, r in grown]
                self.rebuild(m, rows, like[m], **shake)

    def respec(self, spec: dict, num_experts: int, like: Mapping[str, torch.Tensor]) -> None:
        """Every router becomes kind `spec`, keeping its MLP (all routers but `constant`
        share OneLLM's). The projection's shared experts stay as built."""
        if spec.get("shared", 0) != self.spec.get("shared", 0):
            raise ValueError(
                f"router.shared: shared experts are fixed when the model is built "
                f"({self.spec.get('shared', 0)}), got {spec.get('shared', 0)}"
            )
        self.build(num_experts, spec)  # a bad spec fails before anything changes
        self.spec = dict(spec)
        for m, routes in self.routes.items():
            self.rebuild(m, list(range(len(routes))), like[m])

    def rebuild(self, modality: str, rows: list[int], like: torch.Tensor, **shake) -> None:
        """Modality's router rebuilt over len(rows) experts, expert j from old row rows[j]."""
        old = self[modality]
        new = self.build(len(rows))
        transplant(old, new, rows, **shake)
        like = next(old.parameters(), like)
        new.to(like.device, like.dtype).train(old.training)
        new.requires_grad_(like.requires_grad)
        self[modality] = new
