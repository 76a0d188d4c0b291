"""`llm_experts: {kind: moe_layers, ...}`: chosen LLM MLP layers upcycled into mixtures of
experts (MoE-LLaVA's recipe: E copies of the trained dense MLP under a top-k router).

    llm_experts: {kind: moe_layers, layers: [1, 3], experts: 4, k: 2, capacity: 1.5,
                  noise: 0.01, shared: false, router: shared}

- `layers`: the decoder layers whose MLP becomes E `experts`, copies of it (the first exact,
  the others each weight scaled by 1 + `noise` x N(0, 1), seeded by `seed`).
- `k`: experts per position, softmax weights renormalised over them; at noise 0 every copy
  computes the dense MLP and the weights sum to 1, so the layer is the dense one.
- `capacity`: the capacity factor, in training only (experts/llm/moe_parts.py says why);
  null: none. `gate_noise`: noisy gating while training.
- `shared`: one more copy every position uses (DeepSeekMoE's shared expert); the layer's
  output is then the mean of it and the routed mix.
- `router`: `shared` (one gate per layer) or `per_modality` (Ming-Omni: one gate per layer
  for text and each modality; a position reads the gate of its modality run,
  onellm/modeling/llm_experts.py). `add_modality` gives a new modality a gate copied from
  `new_router_from`'s (default text's); every other gate, so every other modality's
  outputs, stay as they were. With one shared gate a new modality needs nothing new.

The layer joins the LLM through hooks on the dense MLP, never by replacing it: the LLM's
modules, weights and saved directory stay as they are (the dense MLP stays the source the
experts were copied from, saved in RUN/llm), and the experts are this module's own
parameters (`llm_experts.layers.<i>.*`, in RUN/model.safetensors). The dense MLP then runs
on no positions: its pre-hook hands it an empty slice and its hook returns the experts'
output for the states it was called with.

The stage's MoE losses and expert-use figures hear each layer's routing (`recorder`,
onellm/modeling/routed_layers.py), each layer a pool of its own.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from onellm.errors import ConfigError, InputError
from onellm.experts.llm.moe_parts import BoundRouter, LayerRouter, MoEMLP, upcycled
from onellm.modeling.llm import base_llm
from onellm.modeling.llm_experts import TEXT, PositionRoutes
from onellm.registry import LLM_EXPERTS

ROUTERS = ("shared", "per_modality")


class MoELayers(nn.Module):
    """The upcycled layers (`layers.<i>`: a `MoEMLP`), built by `attach(model)`."""

    def __init__(
        self,
        *,
        names: Sequence[str],
        llm_width: int,
        llm_layers: int,
        layers: Sequence[int] | None = None,
        experts: int = 4,
        k: int = 2,
        capacity: float | None = 1.5,
        noise: float = 0.01,
        gate_noise: float = 0.0,
        shared: bool = False,
        router: str = "shared",
        new_router_from: str = TEXT,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # default: every other layer from the first (MoE-LLaVA's `sparse` mode)
        layers = list(range(0, llm_layers, 2)) if layers is None else list(layers)
        if not layers or len(set(layers)) != len(layers):
            raise ConfigError(f"llm_experts.layers: expected distinct layer indices, got {layers}")
        if any(not 0 <= i < llm_layers for i in layers):
            raise ConfigError(
                f"llm_experts.layers: expected layers in 0..{llm_layers - 1}, got {layers}"
            )
        if experts < 1 or not 1 <= k <= experts:
            raise ConfigError(f"llm_experts.k: expected 1 <= k <= experts ({experts}), got {k}")
        if capacity is not None and capacity <= 0:
            raise ConfigError(f"llm_experts.capacity: expected > 0 or null, got {capacity}")
        if noise < 0 or gate_noise < 0:
            raise ConfigError(
                f"llm_experts.noise, gate_noise: expected >= 0, got {noise}, {gate_noise}"
            )
        if router not in ROUTERS:
            raise ConfigError(f"llm_experts.router: expected one of {ROUTERS}, got {router!r}")
        if new_router_from not in names:
            raise ConfigError(
                f"llm_experts.new_router_from: expected one of {list(names)}, "
                f"got {new_router_from!r}"
            )
        self.layer_ids, self.width = [int(i) for i in layers], llm_width
        self.num_experts, self.k, self.capacity = experts, k, capacity
        self.noise, self.gate_noise, self.with_shared = noise, gate_noise, shared
        self.per_modality = router == "per_modality"
        self.new_router_from, self.seed = new_router_from, seed
        self.layers = nn.ModuleDict()
        self.names: list[str] = list(names)  # text, then the modalities (llm_experts.py)
        self.recorder: Any = None  # set by a stage's MoE losses (onellm/modeling/routed_layers.py)
        self._routes: PositionRoutes | None = None
        self._pending: dict[int, torch.Tensor] = {}
        self._hooks: list[Any] = []

    @property
    def pools(self) -> dict[str, int]:
        """Each upcycled layer ("layer 1") -> its number of routed experts."""
        return {f"layer {i}": self.num_experts for i in self.layer_ids}

    def attach(self, model: Any) -> None:
        """Upcycle the chosen layers of `model.llm` and join them through hooks."""
        decoder = base_llm(model.llm).model.layers
        generator = torch.Generator().manual_seed(self.seed)
        for i in self.layer_ids:
            mlp = decoder[i].mlp
            like = next(mlp.parameters())
            router = LayerRouter(
                width=self.width,
                experts=self.num_experts,
                k=self.k,
                names=self.names,
                per_modality=self.per_modality,
                gate_noise=self.gate_noise,
                capacity=self.capacity,
            ).to(like.device, like.dtype)
            experts = upcycled(mlp, self.num_experts, noise=self.noise, generator=generator)
            shared = copy.deepcopy(mlp) if self.with_shared else None
            self.layers[str(i)] = MoEMLP(experts, router, shared).train(self.training)
            self._hooks.append(mlp.register_forward_pre_hook(functools.partial(self._enter, i)))
            self._hooks.append(mlp.register_forward_hook(functools.partial(self._exit, i)))
        self.layers.requires_grad_(True)  # new parts train (a stage's `trainable` decides)

    def _enter(self, i: int, module: nn.Module, args: tuple) -> tuple:
        """The dense MLP's pre-hook: keep the states, hand it none of them."""
        self._pending[i] = args[0]
        return (args[0][..., :0, :], *args[1:])

    def _exit(self, i: int, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """The dense MLP's hook: the experts' output for the states it was called with,
        padding left out (no expert runs there, its output is 0: attention never reads it)."""
        h = self._pending.pop(i)
        groups, names, valid = self._groups(h)
        at = valid.reshape(-1).nonzero().squeeze(1)
        flat = h.reshape(-1, h.shape[-1])
        x, g = flat.index_select(0, at), groups.reshape(-1).index_select(0, at)
        y, routing = self.layers[str(i)](x, g, names)
        # not again when a checkpointed layer is recomputed in backward: once per forward
        if self.recorder is not None and torch._C._current_graph_task_id() == -1:
            bound = BoundRouter(self.layers[str(i)].router, g, names)
            self.recorder(f"layer {i}", x.detach(), routing, bound, g, names)
        return torch.zeros_like(flat).index_copy(0, at, y).reshape(h.shape)

    def _groups(self, h: torch.Tensor) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """(B, L, D) states -> each position's group (B, L), the group names, and which
        positions are not padding (B, L)."""
        routes = self._routes
        if routes is None:  # an LLM call outside `model.mixing`: text's, all valid
            zeros = torch.zeros(h.shape[:2], dtype=torch.long, device=h.device)
            return zeros, self.names, torch.ones_like(zeros, dtype=torch.bool)
        if routes.prompt.shape[0] != h.shape[0]:
            raise InputError(
                f"llm_experts: expected the batch of {routes.prompt.shape[0]} rows the routing "
                f"began with, got {h.shape[0]} (beam search is not supported)"
            )
        unknown = [n for n in routes.names if n not in self.names]
        if unknown and self.per_modality:
            raise InputError(
                f"llm_experts: no router for {unknown}; add a modality with model.add_modality"
            )
        length = h.shape[1]
        valid = routes.valid_for_call(length).to(h.device)
        return routes.for_call(length).to(h.device), list(routes.names), valid

    @contextlib.contextmanager
    def routing(self, routes: PositionRoutes | None) -> Iterator[None]:
        """The LLM calls inside route each position by its modality run."""
        before, self._routes = self._routes, routes
        try:
            yield
        finally:
            self._routes = before

    def recompute(self) -> contextlib.AbstractContextManager[None]:
        """Made during a routed forward: a context in which the LLM's calls route as that
        forward's (activation checkpointing recomputes the layers in backward, after
        `routing` has closed; llm_experts.py's `Recomputes`)."""
        return self.routing(self._routes)

    def add_modality(self, model: Any, name: str) -> None:
        """With per-modality gates, `name`'s gate in every layer starts as a copy of
        `new_router_from`'s; no other gate or expert changes."""
        if name in self.names:
            raise InputError(f"llm_experts: modality {name!r} already has its router")
        for layer in self.layers.values():
            if self.per_modality:
                layer.router.gates[name] = copy.deepcopy(layer.router.gates[self.new_router_from])
        self.names.append(name)


LLM_EXPERTS.register("moe_layers", MoELayers)
