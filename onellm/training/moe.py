"""The mixture-of-experts terms of a training step: Switch balance and router z-loss.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from onellm.inference.routing import HEAD, ExpertUse, use_of
from onellm.modeling.projection import Routed, Routing

if TYPE_CHECKING:
    from onellm.training.distributed import Dist
    from onellm.training.stage import MoEConfig


@dataclass
class Call:
    """One recorded router call: its router, input (B, Q, W), `Routing`, and the pool
    indices of its K_m experts."""

    modality: str
    router: nn.Module
    x: torch.Tensor
    routing: Routing
    experts: list[int]

    @property
    def tokens(self) -> int:
        return self.routing.probs[..., 0].numel()


@contextlib.contextmanager
def recording(projection: Routed) -> Iterator[list[Call]]:
    """The projection's router calls inside the block, in order."""
    calls: list[Call] = []

    def record(modality: str, x: torch.Tensor, routing: Routing) -> None:
        router, experts = projection.routers[modality], list(projection.routes[modality])
        calls.append(Call(modality, router, x, routing, experts))

    projection.recorder = record
    try:
        yield calls
    finally:
        projection.recorder = None


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
    num_experts: int,
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    world: int = 1,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """The step's MoE loss to backward on this process (None: nothing to add), and the
    step's balance and z-loss values (unweighted; over all processes) to log.

    `all_sum`: the sum over processes; `world`: their count. Gradients are averaged over
    processes, so this process's share is scaled by `world`, as the task losses are."""
    if not calls or not (balance or z_loss):
        return None, {}
    fresh = [c.router.route(c.x, c.routing.noise) for c in calls]  # a graph of its own
    device = calls[0].x.device
    counts = torch.zeros(num_experts, device=device)
    reach = torch.zeros(num_experts, device=device)
    tokens = torch.zeros(1, device=device)
    for c in calls:
        counts[c.experts] += c.routing.chosen.reshape(-1, len(c.experts)).sum(0).float()
        reach[c.experts] = 1.0
        tokens += c.tokens
    summed = all_sum(torch.cat([counts, reach, tokens]))
    counts, reach, n = summed[:num_experts], summed[num_experts:-1] > 0, summed[-1]
    terms: dict[str, torch.Tensor] = {}
    if balance:
        if scope == "global":
            mass = torch.zeros(num_experts, device=device)
            for c, r in zip(calls, fresh, strict=True):
                mass = mass.index_add(
                    0,
                    torch.tensor(c.experts, device=device),
                    r.probs.reshape(-1, len(c.experts)).float().sum(0),
                )
            terms["balance"] = reach.sum() * (counts / counts.sum() * mass).sum() / n
        else:
            terms["balance"] = sum(
                c.tokens / n * switch_balance(c.routing.chosen, r.probs)
                for c, r in zip(calls, fresh, strict=True)
            )
    if z_loss and any(r.logits is not None for r in fresh):
        terms["z_loss"] = sum(router_z(r.logits) for r in fresh if r.logits is not None) / n
    if not terms:  # a z-loss alone over parameter-free routers
        return None, {}
    weight = {"balance": balance, "z_loss": z_loss}
    loss = world * sum(weight[k] * v for k, v in terms.items())
    values = all_sum(torch.stack([v.detach().float() for v in terms.values()]))
    return loss, {f"moe_{k}": float(v) for k, v in zip(terms, values, strict=True)}


class StepMoE:
    """What a stage does with its routers each optimiser step: record the routings
    (`recording()` around the step's forward passes), then `finish()` for the MoE loss to
    backward and its values to log; `report()` every log step gives the routing since the
    last report and the collapse alarm (onellm/inference/routing.py)."""

    def __init__(self, cfg: MoEConfig, projection: nn.Module, d: Dist) -> None:
        self.cfg, self.projection, self.d = cfg, projection, d
        self.calls: list[Call] = []
        self.use = ExpertUse(floor=cfg.collapse.floor, patience=cfg.collapse.steps)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        if not isinstance(self.projection, Routed):  # a perceiver or MLP: nothing is routed
            yield
            return
        with recording(self.projection) as self.calls:
            yield

    def finish(self) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The step's MoE loss and logged values; its expert use joins the report."""
        calls, self.calls = self.calls, []
        p, cfg = self.projection, self.cfg
        if not isinstance(p, Routed):  # a perceiver or MLP projection: nothing is routed
            return None, {}
        names = sorted(p.routes)
        rows = torch.zeros(len(names), HEAD + 4 * p.num_experts, device=self.d.device)
        for c in calls:
            rows[names.index(c.modality)] += use_of(c.routing, c.experts, p.num_experts).to(
                rows.device
            )
        self.use.add(names, self.d.all_sum(rows).cpu(), p.num_experts)
        return step_losses(
            calls,
            balance=cfg.balance,
            z_loss=cfg.z_loss,
            scope=cfg.scope,
            num_experts=p.num_experts,
            all_sum=self.d.all_sum,
            world=self.d.world,
        )

    def report(self) -> dict[str, Any]:
        """Per modality since the last report: load, routed, entropy, dropped, passed; and
        `collapse` while an expert's share stays under the floor (`warnings`: new alarms)."""
        return self.use.report()
