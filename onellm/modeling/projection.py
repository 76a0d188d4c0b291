"""The projection-kind contract: how a modality's encoder features become its tokens for
the LLM, chosen by `projection.type` in the model YAML (the default `upm`: OneLLM's), or
per modality by `projection.by_modality`.

A kind is a plug-in (experts/projection/: `upm`, `perceiver`, `mlp`) registered in
`PROJECTIONS` as a builder `(projection config, *, width, llm_width, options, where) ->
module` whose module meets `Projection`. The model never asks which kind it holds:
routing, experts and upcycling are a routed kind's own (`Routed`), each router call's
result a `Routing` (the routers themselves are plug-ins: experts/projection/routers.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sized
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from onellm.config import ProjectionConfig, check_kwargs


class Projection(Protocol):
    """The contract of a projection kind (an `nn.Module`)."""

    reads_frames: bool  # forward takes (B, T, S+1, W) per-frame features, not their mean
    start_tag: nn.ParameterDict  # modality -> (1, 1, D)
    end_tag: nn.ParameterDict

    def add_modality(
        self, name: str, *, output_scale: float, experts: list[int] | None, tokens_in: int
    ) -> None: ...

    def num_tokens(self, modality: str) -> int: ...

    def blocks(self) -> list[nn.Module]: ...  # heavy blocks: checkpointed, FSDP-sharded

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor: ...


@dataclasses.dataclass
class Routing:
    """One router call over (B, Q) tokens and its K experts."""

    weights: torch.Tensor  # (B, Q, K) what mixes the experts (zero where not used)
    probs: torch.Tensor  # (B, Q, K) the soft weights before any choice (sum 1), noiseless
    logits: torch.Tensor | None  # (B, Q, K) the router's raw outputs (None: no parameters)
    chosen: torch.Tensor  # (B, Q, K) bool: assignments before capacity
    dropped: torch.Tensor  # (B, Q, K) bool: chosen assignments over an expert's capacity
    noise: torch.Tensor | None = None  # the gating noise drawn, so that a recompute matches

    @property
    def passed(self) -> torch.Tensor:
        """(B, Q) bool: tokens whose every assignment was dropped (they skip the experts)."""
        return ~(self.chosen & ~self.dropped).any(-1)


@runtime_checkable
class Routed(Protocol):
    """A projection whose modalities are routed over a pool of experts (the UPM): what the
    stage's MoE losses, the routing report, new experts and upcycling read and call."""

    routes: Mapping[str, Any]  # modality -> the expert indices its router weighs
    num_experts: int
    router_spec: Mapping[str, Any]  # the router's `{type: ..., **options}`
    shared: Sized  # the shared experts every modality uses beside its routed ones
    experts: nn.Module  # the expert pool (compiled as one module, onellm/training/prepare.py)
    routers: Mapping[str, Any]  # modality -> its router (`route(x, noise)`), read by MoE losses
    recorder: Callable[..., Any] | None  # set by the stage's MoE losses to hear each routing

    def routing(self, features: torch.Tensor, modality: str) -> tuple[torch.Tensor, Routing]:
        """(B, S+1, W) -> the experts' input and the `Routing` over `routes[modality]`."""
        ...

    def full_weights(self, weights: torch.Tensor, modality: str) -> torch.Tensor:
        """(..., K_m) weights over the modality's experts -> (..., K) over all, 0 elsewhere."""
        ...

    def build_router(self, count: int, spec: dict | None = None) -> nn.Module:
        """A router of kind `spec` (default the projection's) over `count` experts."""
        ...

    def add_experts(
        self,
        count: int,
        *,
        source: int | None = None,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """`count` new experts (copies of `source`), no modality routes to -> indices."""
        ...

    def upcycle(
        self, sources: list[int], *, noise: float = 0.0, generator: torch.Generator | None = None
    ) -> list[int]:
        """One copy per source, routed wherever its source is -> the new indices."""
        ...

    def set_router(self, spec: dict) -> None:
        """Every modality's router becomes kind `spec`, keeping what it learned."""
        ...


Builder = Callable[..., nn.Module]


def from_options(kind: type[nn.Module]) -> Builder:
    """A builder for a kind that takes `width`, `llm_width`, its own `projection.options`
    and the shared sizes it names (`num_queries`, `num_heads`); unknown options are refused
    by name."""

    def build(
        p: ProjectionConfig, *, width: int, llm_width: int, options: Mapping[str, Any], where: str
    ) -> nn.Module:
        check_kwargs(kind, options, where)
        accepted = inspect.signature(kind).parameters
        shared = {"num_queries": p.num_queries, "num_heads": p.num_heads}
        shared = {k: v for k, v in shared.items() if k in accepted and k not in options}
        return kind(width=width, llm_width=llm_width, **shared, **options)

    build.kind = kind  # type: ignore[attr-defined]
    return build
