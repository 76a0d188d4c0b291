"""The mixture-of-experts terms of a training step: Switch balance and router z-loss, over
the routed projection's experts and each of the LLM's routed layers (`llm_experts: {kind:
moe_layers}`, onellm/modeling/routed_layers.py), each layer a pool of its own.

    moe: {balance: 0.01, z_loss: 0.001, scope: global}      (a stage's `moe:`)

balance (Switch Transformer, as MoE-LLaVA and CuMo use it): |E| x sum_e f_e P_e, where
f_e is the share of the (query, expert) assignments that chose expert e (before capacity,
as DeepSpeed counts them), P_e the mean soft weight on e, and |E| the number of experts
the routers weigh; 1 when the load is even, |E| at worst. z_loss (ST-MoE): the mean over
queries of logsumexp(router logits)^2, which keeps the logits small.

scope says which tokens f and P are taken over. `micro_batch`: each router call alone
(one modality in one micro-batch), the losses weighted by tokens, as a per-layer aux loss
does. `global`: every call of the optimiser step, every micro-batch and every modality, on
every process (Qwen's global-batch balance): a modality may then keep to some experts as
long as the step's load over all of them is even. OneLLM's batches hold one modality, so
per micro-batch every modality is pushed to use every expert.

Global f is only known once the step's last micro-batch has run, so the terms are taken
at the end of the step: f from the recorded choices (summed over processes), P and the
logits from each call's router run again on its recorded input, on a fresh graph (the
step's backward has freed the first one). The loss is then exactly that of one batch
holding the step's examples, and so are its gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from onellm.inference.routing import HEAD, ExpertUse, use_by_group, use_of
from onellm.modeling.projection import Routed, Routing
from onellm.modeling.routed_layers import RoutedLayers

if TYPE_CHECKING:
    from torch import nn

    from onellm.training.distributed import Dist
    from onellm.training.stage import MoEConfig

PROJECTION = "projection"  # the routed projection's pool; an LLM layer's is its name


@dataclass
class Call:
    """One recorded router call: its router (`route(x, noise)`), input (..., W), `Routing`,
    and the pool indices of its K_m experts. `pool`: which experts it weighs (the
    projection's, or an LLM layer's own); an LLM layer's call holds positions of several
    modalities: `groups` (N,) each one's index into `names`."""

    modality: str
    router: Any
    x: torch.Tensor
    routing: Routing
    experts: list[int]
    pool: str = PROJECTION
    groups: torch.Tensor | None = None
    names: Sequence[str] = ()

    @property
    def tokens(self) -> int:
        return self.routing.probs[..., 0].numel()


@contextlib.contextmanager
def recording(projection: Routed, calls: list[Call] | None = None) -> Iterator[list[Call]]:
    """The projection's router calls inside the block, in order (appended to `calls`)."""
    calls = [] if calls is None else calls

    def record(modality: str, x: torch.Tensor, routing: Routing) -> None:
        router, experts = projection.routers[modality], list(projection.routes[modality])
        calls.append(Call(modality, router, x, routing, experts))

    projection.recorder = record
    try:
        yield calls
    finally:
        projection.recorder = None


@contextlib.contextmanager
def recording_layers(layers: RoutedLayers, calls: list[Call]) -> Iterator[list[Call]]:
    """The LLM's routed layers' calls inside the block (onellm/modeling/routed_layers.py)."""

    def record(pool: str, x, routing: Routing, router, groups, names) -> None:
        experts = list(range(layers.pools[pool]))
        calls.append(Call("", router, x, routing, experts, pool, groups, list(names)))

    layers.recorder = record
    try:
        yield calls
    finally:
        layers.recorder = None


def switch_balance(chosen: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """(..., K) assignments and soft weights -> K x sum_e f_e P_e (1: even load)."""
    chosen, probs = chosen.reshape(-1, chosen.shape[-1]).float(), probs.reshape(-1, probs.shape[-1])
    f = chosen.sum(0) / chosen.sum()
    return probs.shape[-1] * (f * probs.float().mean(0)).sum()


def router_z(logits: torch.Tensor) -> torch.Tensor:
    """(..., K) logits -> sum over tokens of logsumexp^2 (divide by the tokens for ST-MoE's)."""
    return logits.float().logsumexp(-1).square().sum()


def step_losses(
    calls: list[Call],
    *,
    balance: float,
    z_loss: float,
    scope: str,
    num_experts: int | Mapping[str, int],
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    world: int = 1,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The step's MoE loss to backward on this process (None: nothing to add), and the
    step's balance and z-loss values (unweighted; over all processes) to log.

    `num_experts`: each pool's experts ({pool: K}; an int: the projection's alone). Each
    pool is balanced on its own and the pools' terms are summed, as MoE-LLaVA sums its
    layers' aux losses; with several pools each one's values are logged too.
    `all_sum`: the sum over processes; `world`: their count. Gradients are averaged over
    processes, so this process's share is scaled by `world`, as the task losses are."""
    if not calls or not (balance or z_loss):
        return None, {}
    pools = {PROJECTION: num_experts} if isinstance(num_experts, int) else dict(num_experts)
    fresh = [c.router.route(c.x, c.routing.noise) for c in calls]  # a graph of its own
    device = calls[0].x.device
    at, size = {}, 0
    for pool, k in pools.items():  # per pool: counts (K), reach (K), tokens (1)
        at[pool], size = size, size + 2 * k + 1
    local = torch.zeros(size, device=device)
    for c in calls:
        o, k = at[c.pool], pools[c.pool]
        chosen = c.routing.chosen.reshape(-1, len(c.experts)).sum(0).float()
        local[[o + e for e in c.experts]] += chosen
        local[[o + k + e for e in c.experts]] = 1.0
        local[o + 2 * k] += c.tokens
    summed = all_sum(local)
    terms: dict[str, dict[str, torch.Tensor]] = {}
    for pool, k in pools.items():
        o = at[pool]
        counts, reach, n = summed[o : o + k], summed[o + k : o + 2 * k] > 0, summed[o + 2 * k]
        mine = [(c, r) for c, r in zip(calls, fresh, strict=True) if c.pool == pool]
        if float(n) == 0:  # no call of this pool on any process
            continue
        got = pool_terms(mine, counts, reach, n, balance=balance, z_loss=z_loss, scope=scope)
        if got:
            terms[pool] = got
    if not terms:  # a z-loss alone over parameter-free routers
        return None, {}
    weight = {"balance": balance, "z_loss": z_loss}
    loss = world * sum(weight[k] * v for got in terms.values() for k, v in got.items())
    keys = [(pool, k) for pool, got in terms.items() for k in got]
    values = all_sum(torch.stack([terms[p][k].detach().float() for p, k in keys]))
    logged: dict[str, Any] = {}
    for (pool, k), v in zip(keys, values, strict=True):
        logged[f"moe_{k}"] = logged.get(f"moe_{k}", 0.0) + float(v)
        if len(terms) > 1:
            logged.setdefault(f"moe_{k}_by_pool", {})[pool] = float(v)
    return loss, logged


def pool_terms(
    calls: list[tuple[Call, Routing]],
    counts: torch.Tensor,
    reach: torch.Tensor,
    n: torch.Tensor,
    *,
    balance: float,
    z_loss: float,
    scope: str,
) -> dict[str, torch.Tensor]:
    """One pool's balance and z-loss over its calls (each with its fresh routing), from
    the step's counts, reached experts and tokens over all processes."""
    terms: dict[str, torch.Tensor] = {}
    if balance:
        mass = torch.zeros_like(counts)
        if scope == "global":
            for c, r in calls:
                mass = mass.index_add(
                    0,
                    torch.tensor(c.experts, device=mass.device),
                    r.probs.reshape(-1, len(c.experts)).float().sum(0),
                )
            terms["balance"] = reach.sum() * (counts / counts.sum() * mass).sum() / n
        else:
            terms["balance"] = sum(
                (c.tokens / n * switch_balance(c.routing.chosen, r.probs) for c, r in calls),
                mass.sum(),  # a pool with no call here still adds a term (0) to backward
            )
    if z_loss and any(r.logits is not None for _, r in calls):
        terms["z_loss"] = sum(router_z(r.logits) for _, r in calls if r.logits is not None) / n
    return terms


class StepMoE:
    """What a stage does with its routers each optimiser step: record the routings
    (`recording()` around the step's forward passes: the routed projection's and the LLM's
    routed layers', `llm_experts`), then `finish()` for the MoE loss to backward and its
    values to log; `report()` every log step gives the routing since the last report and
    the collapse alarm (onellm/inference/routing.py), the LLM layers' under `llm_routing`
    ({layer: {routing: {text | modality: figures}, expert_share, collapse?}})."""

    def __init__(
        self, cfg: MoEConfig, projection: nn.Module, d: Dist, llm_experts: Any = None
    ) -> None:
        self.cfg, self.projection, self.d = cfg, projection, d
        self.layers = llm_experts if isinstance(llm_experts, RoutedLayers) else None
        self.calls: list[Call] = []
        self.use = self.expert_use()
        self.layer_use: dict[str, ExpertUse] = {}

    def expert_use(self) -> ExpertUse:
        return ExpertUse(floor=self.cfg.collapse.floor, patience=self.cfg.collapse.steps)

    def pools(self) -> dict[str, int]:
        """Each routed pool this stage records -> its experts."""
        out = {PROJECTION: self.projection.num_experts} if self.routed else {}
        return out | (dict(self.layers.pools) if self.layers is not None else {})

    @property
    def routed(self) -> bool:
        return isinstance(self.projection, Routed)  # a perceiver or MLP: nothing is routed

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.calls = []
        with contextlib.ExitStack() as stack:
            if self.routed:
                stack.enter_context(recording(self.projection, self.calls))
            if self.layers is not None:
                stack.enter_context(recording_layers(self.layers, self.calls))
            yield

    def finish(self) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The step's MoE loss and logged values; its expert use joins the report."""
        calls, self.calls = self.calls, []
        pools, cfg = self.pools(), self.cfg
        if not pools:
            return None, {}
        if self.routed:
            p = self.projection
            names = sorted(p.routes)
            rows = torch.zeros(len(names), HEAD + 4 * p.num_experts, device=self.d.device)
            for c in (c for c in calls if c.pool == PROJECTION):
                rows[names.index(c.modality)] += use_of(c.routing, c.experts, p.num_experts).to(
                    rows.device
                )
            self.use.add(names, self.d.all_sum(rows).cpu(), p.num_experts)
        if self.layers is not None:
            for pool, k in self.layers.pools.items():
                names = list(self.layers.names)
                rows = torch.zeros(len(names), HEAD + 4 * k, device=self.d.device)
                for c in (c for c in calls if c.pool == pool):
                    rows += use_by_group(c.routing, c.groups, c.names, names, k).to(rows.device)
                use = self.layer_use.setdefault(pool, self.expert_use())
                use.add(names, self.d.all_sum(rows).cpu(), k)
        return step_losses(
            calls,
            balance=cfg.balance,
            z_loss=cfg.z_loss,
            scope=cfg.scope,
            num_experts=pools,
            all_sum=self.d.all_sum,
            world=self.d.world,
        )

    def report(self) -> dict[str, Any]:
        """Per modality since the last report: load, routed, entropy, dropped, passed; and
        `collapse` while an expert's share stays under the floor (`warnings`: new alarms)."""
        out = self.use.report()
        layers = {}
        for pool, use in self.layer_use.items():
            got = use.report()
            warnings = [f"LLM {pool}: {w}" for w in got.pop("warnings", [])]
            out["warnings"] = out.get("warnings", []) + warnings
            if got:
                layers[pool] = got
        if layers:
            out["llm_routing"] = layers
        return out
