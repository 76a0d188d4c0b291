"""Routing introspection: which projection experts a modality's query tokens use.

The same figures three ways: `model.routing_report(m, inputs)` on given inputs; a training
stage's metrics.jsonl every log step (`routing`, per modality since the last log); and
plots/expert_load.png. Per modality:

    load     (K,) each expert's share of the routing weight (sums to 1)
    routed   (K,) the share of queries that chose each expert (sums to k for topk)
    entropy  the mean entropy (nats) of a query's soft weights; ln K: uniform, 0: one expert
    dropped  assignments over an expert's capacity; passed: queries that lost every expert

The LLM's routed layers (`llm_experts: {kind: moe_layers}`) give the same figures per
layer, each position counted under its modality (text, or its modality run).

The collapse alarm (`ExpertUse`) watches each expert's share of all modalities' routing
weight together: per modality a share of 0 is specialisation, not collapse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from onellm.errors import InputError
from onellm.modeling.projection import Routed, Routing

if TYPE_CHECKING:
    from onellm.model import OneLLM

HEAD = 3  # tokens, entropy sum, passed; then weight, routed, dropped, reach: K each


def use_of(routing: Routing, experts: list[int], num_experts: int) -> torch.Tensor:
    """One router call's sums over its tokens: (3 + 4K,) [tokens, entropy, passed, weight,
    routed, dropped, reach], the per-expert ones over all K experts of the pool."""
    k = len(experts)
    p = routing.probs.detach().float().reshape(-1, k)
    row = torch.zeros(HEAD + 4 * num_experts, device=p.device)
    row[0] = p.shape[0]
    row[1] = -(p * p.clamp_min(1e-12).log()).sum()
    row[2] = routing.passed.sum()
    for block, values in enumerate(
        (routing.weights.detach().float(), routing.chosen.float(), routing.dropped.float())
    ):
        at = [HEAD + block * num_experts + e for e in experts]
        row[at] = values.reshape(-1, k).sum(0)
    row[[HEAD + 3 * num_experts + e for e in experts]] = p.shape[0]
    return row


def use_by_group(
    routing: Routing,
    groups: torch.Tensor,
    groups_named: Sequence[str],
    names: Sequence[str],
    num_experts: int,
) -> torch.Tensor:
    """An LLM layer's call over N positions of several modalities (onellm/modeling/
    routed_layers.py: `groups` (N,) each one's index into `groups_named`) -> `use_of` sums
    per name of `names` (len(names), 3 + 4K), each position under its modality."""
    rows = torch.zeros(len(names), HEAD + 4 * num_experts, device=routing.probs.device)
    experts = list(range(num_experts))
    for g, name in enumerate(groups_named):
        at = groups == g
        if name in names and bool(at.any()):
            r = routing
            sub = Routing(r.weights[at], r.probs[at], None, r.chosen[at], r.dropped[at])
            rows[list(names).index(name)] += use_of(sub, experts, num_experts)
    return rows


def summarise(row: torch.Tensor, num_experts: int) -> dict[str, Any]:
    """`use_of` sums (added over calls) -> the figures a person reads (see the module doc)."""
    k = num_experts
    tokens = max(float(row[0]), 1.0)
    weight = row[HEAD : HEAD + k]
    return {
        "tokens": int(row[0]),
        "load": (weight / weight.sum().clamp_min(1e-12)).tolist(),
        "routed": (row[HEAD + k : HEAD + 2 * k] / tokens).tolist(),
        "entropy": float(row[1]) / tokens,
        "dropped": int(row[HEAD + 2 * k : HEAD + 3 * k].sum()),
        "passed": int(row[2]),
    }


class ExpertUse:
    """Expert use summed between reports, and the collapse alarm: an expert whose share of
    the routing weight (all modalities together, among the experts they weigh) stays under
    `floor` x its fair share 1/K for `patience` steps or more."""

    def __init__(self, *, floor: float, patience: int) -> None:
        self.floor, self.patience = floor, patience
        self.rows: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.under: dict[int, int] = {}  # expert -> steps under the floor so far
        self.alarmed: set[int] = set()

    def add(self, names: list[str], rows: torch.Tensor, num_experts: int) -> None:
        """One step's `use_of` sums per modality (rows aligned with `names`)."""
        self.steps, self.num_experts = self.steps + 1, num_experts
        for name, row in zip(names, rows, strict=True):
            if row[0] > 0:
                self.rows[name] = self.rows[name] + row if name in self.rows else row.clone()

    def report(self) -> dict[str, Any]:
        """{routing: {m: figures}, expert_share, collapse?, warnings} since the last report."""
        if not self.rows:
            self.steps = 0
            return {}
        k = self.num_experts
        out: dict[str, Any] = {
            "routing": {m: summarise(r, k) for m, r in sorted(self.rows.items())}
        }
        pooled = sum(self.rows.values())
        weight, reach = pooled[HEAD : HEAD + k], pooled[HEAD + 3 * k :] > 0
        share = weight / weight.sum().clamp_min(1e-12)
        out["expert_share"] = [float(s) if r else None for s, r in zip(share, reach, strict=True)]
        fair = 1.0 / max(int(reach.sum()), 1)
        for e in range(k):
            starved = bool(reach[e]) and float(share[e]) < self.floor * fair
            self.under[e] = self.under.get(e, 0) + self.steps if starved else 0
        collapsed = sorted(e for e, n in self.under.items() if n >= self.patience)
        out["warnings"] = [
            f"expert {e} has carried under {100 * self.floor * fair:.1f}% of the routing weight "
            f"(a fair share is {100 * fair:.0f}%) for {self.under[e]} steps: the routers have "
            f"collapsed onto fewer experts; moe.balance spreads them"
            for e in collapsed
            if e not in self.alarmed
        ]
        if collapsed:
            out["collapse"] = {
                "experts": collapsed,
                "floor": self.floor * fair,
                "steps": min(self.under[e] for e in collapsed),
            }
        self.alarmed = set(collapsed)
        self.rows, self.steps = {}, 0
        return out


def routed_projection(model: OneLLM, modality: str) -> Routed:
    """The routed projection `modality` goes through; `InputError` if its kind has no router."""
    proj = model.projector(modality)
    if not isinstance(proj, Routed):
        p = model.base_config.projection
        kind = p.kind_of(model.modality_key(modality)) or p.type
        raise InputError(
            f"routing: {modality} goes through the {kind} projection, which has no router"
        )
    return proj


@torch.no_grad()
def routing(model: OneLLM, x: torch.Tensor, modality: str) -> torch.Tensor:
    """Routing weights over all K projection experts for each query token: (B, Q, K);
    exactly 0 for experts outside the modality's routes."""
    key = model.modality_key(modality)
    proj = routed_projection(model, key)
    weights = proj.routing(model.features(x, key), key)[1].weights
    return proj.full_weights(weights.float(), key)


def routing_report(model: OneLLM, modality: str, inputs: Any) -> dict[str, Any]:
    """Which experts `modality` uses on `inputs` (raw inputs, a list of them, or a
    preprocessed batch), as at inference: mean weight per expert (K,) and per query token
    (Q, K), and the figures a training stage logs (load, routed, entropy, dropped, passed).
    `InputError` if the modality's projection kind has no router."""
    p = routed_projection(model, modality)
    key = model.modality_key(modality)
    shape = model.modalities[key].input_shape()
    if isinstance(inputs, torch.Tensor) and inputs.dim() == len(shape) + 1:
        x = inputs.to(model.device, model.dtype)
    else:
        raws = inputs if isinstance(inputs, list) else [inputs]
        x = torch.cat([model.preprocess(r, key) for r in raws])
    was_training = model.training
    model.eval()  # as at inference: no gating noise, nothing dropped for capacity
    try:
        with torch.no_grad():
            r = p.routing(model.features(x, key), key)[1]
    finally:
        model.train(was_training)
    w = p.full_weights(r.weights.float(), key)  # (B, Q, K)
    return {
        "modality": key,
        "experts": p.routes[key],
        "shared": len(p.shared),
        "per_expert": w.mean(dim=(0, 1)).tolist(),
        "per_query": w.mean(dim=0).tolist(),
        **summarise(use_of(r, p.routes[key], p.num_experts), p.num_experts),
    }
