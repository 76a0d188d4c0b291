"""LLM experts whose layers route each position over a pool of experts (`llm_experts: {kind:
moe_layers}`, experts/llm/): what a stage's MoE losses and expert-use figures read
(onellm/training/moe.py), beside the routed projection's (`Routed`).

Each routed layer is a pool of its own (`pools`: its name -> its experts), balanced on its
own. Its calls are heard through `recorder`, called with

    (pool, x (N, D) the router's input, detached; routing: a `Routing` over the N positions;
     router: `.route(x, noise)` gives that routing again on a fresh graph;
     groups (N,): each position's index into `names`; names: [text, *modalities])

The router input is detached: by the end of a step its backward has freed the LLM's graph,
so the MoE losses move the routers, not the layers below them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RoutedLayers(Protocol):
    """An `llm_experts` kind with routed layers (the stage's MoE losses hear its routings)."""

    pools: Mapping[str, int]  # each routed layer's name ("layer 1") -> its number of experts
    names: Sequence[str]  # the groups a position belongs to: text, then each modality
    recorder: Callable[..., Any] | None  # set by the stage's MoE losses while a step runs
