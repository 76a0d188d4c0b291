"""Per-modality LoRA experts in the LLM (Phi-4-multimodal's LoRA per input modality, Uni-MoE's
modality experts), written in a model config as

    llm_experts: {kind: lora_per_modality, r: 8, alpha: 16, route: modality}

One peft LoRA adapter per modality and one for text (named as the modalities: `text`,
`image`, ...) on `target_modules` of every decoder layer, so saving (RUN/lora/<name>/),
loading and merging stay peft's own. Each position runs its modality run's adapter
(onellm/modeling/llm_experts.py says which run a position belongs to):

    q_proj(x) = W x + sum_e  B_e A_e (w_e(x) * dropout(x)) * alpha / r

with w_e = 1 where the position's expert is e, else 0 (`route: modality`); this is exact
because LoRA's path is linear and bias-free: a forward pre-hook on each adapter's `lora_A`
scales its input, and peft sums the active adapters (peft/tuners/lora/layer.py,
Linear.forward). Only the experts a call's positions use are active, so an absent
modality's expert is not computed and gets no gradient (None, not zero: AdamW leaves it
exactly as it was). `route: learned` gates every expert per position instead (`Gates`).
B starts at zero (peft's init): an untrained expert adds exact zeros.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from onellm.errors import ConfigError, InputError
from onellm.modeling.llm import base_llm, has_lora
from onellm.modeling.llm_experts import TEXT, PositionRoutes
from onellm.registry import LLM_EXPERTS

ROUTES = ("modality", "learned")


class Gates(nn.Module):
    """`route: learned`: one LoRA'd module's weight for each expert at each position,
    sigmoid(w_e . x + b_e + prior [e is the position's modality]). Independent gates, not a
    softmax: a new modality's expert (zero B, gate rows appended) changes no other expert's
    weight, so add_modality leaves the other modalities bit-identical. w starts at zero and
    b at -prior / 2: each position starts on its modality's expert (sigmoid(prior / 2),
    0.98 at prior 8) with the others nearly off, i.e. as `route: modality`, so the experts
    first specialise as there and the gates learn where sharing helps; a uniform start
    would train every expert on every modality alike."""

    def __init__(self, *, width: int, experts: int, prior: float) -> None:
        super().__init__()
        self.prior = prior
        self.weight = nn.Parameter(torch.zeros(experts, width))
        self.bias = nn.Parameter(torch.full((experts,), -prior / 2))

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), route (B, L) expert indices -> (B, L, E) weights in (0, 1)."""
        logits = F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))
        own = F.one_hot(route, self.weight.shape[0]).to(x.dtype) * self.prior
        return torch.sigmoid(logits + own)

    def grow(self) -> None:
        """One more expert, off everywhere it is not the position's own."""
        w, b = self.weight.detach(), self.bias.detach()
        self.weight = nn.Parameter(torch.cat([w, w.new_zeros(1, w.shape[1])]))
        self.bias = nn.Parameter(torch.cat([b, b.new_full((1,), -self.prior / 2)]))


def check_options(
    r: Any, alpha: Any, dropout: Any, target_modules: Any, route: Any, prior: Any
) -> None:
    """`llm_experts:`'s own options, refused by name before anything is built."""
    if route not in ROUTES:
        raise ConfigError(f"llm_experts.route: expected one of {', '.join(ROUTES)}, got {route!r}")
    if not isinstance(prior, (int, float)) or prior < 0:
        raise ConfigError(f"llm_experts.prior: expected a number >= 0, got {prior!r}")
    if not isinstance(r, int) or r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ConfigError(
            f"llm_experts.r/alpha/dropout: expected an int >= 1, > 0 and in [0, 1), got "
            f"{r!r}, {alpha!r} and {dropout!r}"
        )
    if isinstance(target_modules, str) or not target_modules:
        raise ConfigError(
            f"llm_experts.target_modules: expected a list of module names, got {target_modules!r}"
        )


def check_targets(llm: nn.Module, targets: Sequence[str]) -> None:
    """Each target names linear layers of the LLM (peft matches them by that last name)."""
    linear = {n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ConfigError(
            f"llm_experts.target_modules: expected the LLM's linear layers "
            f"({', '.join(sorted(linear))}), got {missing[0]!r}"
        )


def set_active(layers: Iterable[LoraLayer], names: list[str]) -> None:
    """peft's active adapters on `layers`; requires_grad stays the stage's (peft's
    set_adapter sets it too)."""
    for layer in layers:
        grads = [(p, p.requires_grad) for p in layer.parameters()]
        layer.set_adapter(names)
        for p, g in grads:
            p.requires_grad_(g)


def copy_adapter(layers: Iterable[LoraLayer], name: str, source: str) -> None:
    """Adapter `name`'s factors as a copy of `source`'s, on every LoRA'd layer."""
    with torch.no_grad():
        for layer in layers:
            for table in (layer.lora_A, layer.lora_B):
                table[name].weight.copy_(table[source].weight)


class Call:
    """One routed LLM call (or one `generate`): each position's expert index and whether it
    is padding, by the length of the call (KV-cached steps continue each row's last run),
    and `route: learned`'s gate weights by LoRA'd module."""

    def __init__(self, routes: PositionRoutes) -> None:
        self.routes = routes
        self.by_length: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.gates: dict[str, torch.Tensor] = {}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> the (B, L) expert indices and valid positions of this call."""
        rows, length = self.routes.prompt.shape[0], x.shape[1]
        if x.shape[0] != rows:
            raise InputError(
                f"llm_experts: expected the batch the routing began with ({rows} rows), got "
                f"{x.shape[0]} (beam search is not supported)"
            )
        if length not in self.by_length:
            self.by_length[length] = (
                self.routes.for_call(length).to(x.device),
                self.routes.valid_for_call(length).to(x.device),
            )
        return self.by_length[length]


class LoRAPerModality(nn.Module):
    """The `lora_per_modality` kind: built by onellm/modeling/build.py, joined by `attach`."""

    def __init__(
        self,
        *,
        names: Sequence[str],
        llm_width: int,
        llm_layers: int,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        route: str = "modality",
        prior: float = 8.0,
    ) -> None:
        super().__init__()
        check_options(r, alpha, dropout, target_modules, route, prior)
        self.names, self.route, self.prior = list(names), route, float(prior)
        self.lora = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
        )
        self.gates = nn.ModuleDict()  # route: learned: {LoRA'd module: Gates}
        self._layers: dict[str, LoraLayer] = {}  # the LLM's, not this module's children
        self._handles: list[Any] = []
        self._active: list[str] | None = None
        self._call: Call | None = None  # inside `routing`

    # ------------------------------------------------------------------ joining the LLM
    def attach(self, model: Any) -> None:
        """Wrap `model.llm` with peft, one adapter per name, and hook every adapter's input."""
        if has_lora(model.llm):
            raise ConfigError(
                "llm_experts: lora_per_modality puts its own LoRA on the LLM, which has one already"
            )
        llm = base_llm(model.llm)
        check_targets(llm, self.lora.target_modules)
        peft = get_peft_model(model.llm, copy.deepcopy(self.lora), adapter_name=self.names[0])
        for name in self.names[1:]:
            peft.add_adapter(name, copy.deepcopy(self.lora))
        for n, p in peft.named_parameters():  # every expert trains, as add_lora's LoRA does
            p.requires_grad_("lora_" in n)
        model.llm = peft
        # keyed by the module's name in the LLM ("-" for "."): a gate's name says its module
        self._layers = {
            n.replace(".", "-"): m for n, m in llm.named_modules() if isinstance(m, LoraLayer)
        }
        for key, layer in self._layers.items():
            if self.route == "learned":
                gates = Gates(width=layer.in_features, experts=len(self.names), prior=self.prior)
                self.gates[key] = gates.to(layer.base_layer.weight.device)
                hook = functools.partial(self._gate, key)
                self._handles.append(layer.register_forward_pre_hook(hook))
            for name in self.names:
                self._hook(key, layer, name)
        self._activate([TEXT])

    def _hook(self, key: str, layer: LoraLayer, name: str) -> None:
        hook = functools.partial(self._scale, key, name)
        self._handles.append(layer.lora_A[name].register_forward_pre_hook(hook))

    def _activate(self, names: list[str]) -> None:
        if names != self._active:
            set_active(self._layers.values(), names)
            self._active = names

    # ------------------------------------------------------------------ per call
    @contextlib.contextmanager
    def routing(self, routes: PositionRoutes) -> Iterator[None]:
        """The LLM calls inside run each position's expert; outside, every position is text's."""
        if list(routes.names) != self.names:
            raise InputError(
                f"llm_experts: expected routes over {self.names}, got {list(routes.names)}"
            )
        if self.route == "learned":
            used = self.names
        else:
            valid = routes.prompt if routes.valid is None else routes.prompt[routes.valid]
            present = set(valid.unique().tolist())
            used = [n for i, n in enumerate(self.names) if i in present] or [TEXT]
        before = self._call, self._active  # a routing inside another gives it back
        self._call = Call(routes)
        self._activate(used)
        try:
            yield
        finally:
            self._call = before[0]
            self._activate(before[1] if before[0] is not None else [TEXT])

    def recompute(self) -> contextlib.AbstractContextManager[None]:
        """This call's routing again, for activation checkpointing's recomputation."""
        return contextlib.nullcontext() if self._call is None else self.routing(self._call.routes)

    def _gate(self, key: str, layer: nn.Module, args: tuple) -> None:
        if self._call is not None:
            route, _ = self._call.route(args[0])
            self._call.gates[key] = self.gates[key](args[0], route)

    def _scale(self, key: str, name: str, module: nn.Module, args: tuple):
        if self._call is None:
            return None
        x = args[0]
        route, valid = self._call.route(x)
        index = self.names.index(name)
        if self.route == "learned":
            w = self._call.gates[key][..., index] * valid
        else:
            w = (route == index) & valid
        return (x * w[..., None].to(x.dtype), *args[1:])

    # ------------------------------------------------------------------ surgery
    def add_modality(self, model: Any, name: str) -> None:
        """A new adapter `name` (zero B) and its hooks; no other expert changes."""
        if name in self.names:
            raise ConfigError(f"llm_experts: modality {name!r} has its expert already")
        grads = [(p, p.requires_grad) for p in model.llm.parameters()]
        model.llm.add_adapter(name, copy.deepcopy(self.lora))  # peft re-marks what trains
        for p, g in grads:
            p.requires_grad_(g)
        for n, p in model.llm.named_parameters():
            if "lora_" in n and f".{name}." in n:
                p.requires_grad_(True)
        self.names.append(name)
        for key, layer in self._layers.items():
            self._hook(key, layer, name)
        for gates in self.gates.values():
            gates.grow()
        self._active = None
        self._activate([TEXT])

    def start_from(self, model: Any, name: str, source: str) -> None:
        """`name`'s adapter as a copy of `source`'s (route: modality; no other position runs
        it). Learned gates weigh every expert everywhere: there it stays at zero."""
        if self.route == "modality":
            copy_adapter(self._layers.values(), name, source)

    def merge(self, model: Any, name: str) -> None:
        """Fold `name`'s adapter into the LLM's weights (peft's merge_and_unload of it); the
        other experts are dropped and the LLM is a plain one."""
        if self.route != "modality":
            raise InputError(
                "merge_llm_experts: route: learned mixes every expert at every position; only "
                "route: modality merges into plain weights"
            )
        if name not in self.names:
            raise InputError(f"merge_llm_experts: expected one of {self.names}, got {name!r}")
        for handle in self._handles:
            handle.remove()
        self._handles, self._layers = [], {}
        model.llm = model.llm.merge_and_unload(adapter_names=[name])


LLM_EXPERTS.register("lora_per_modality", LoRAPerModality)
