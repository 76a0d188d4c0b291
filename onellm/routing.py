"""Routing introspection: which projection experts a modality's query tokens use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from onellm.model import OneLLM


@torch.no_grad()
def routing(model: OneLLM, x: torch.Tensor, modality: str) -> torch.Tensor:
    """Routing weights over all K projection experts for each query token: (B, Q, K);
    exactly 0 for experts outside the modality's routes."""
    key = model.modality_key(modality)
    weights = model.projection.route(model.features(x, key), key)[1]
    return model.projection.full_weights(weights.float(), key)


def routing_report(model: OneLLM, modality: str, inputs: Any) -> dict[str, Any]:
    """Which experts `modality` uses on `inputs` (raw inputs, a list of them, or a
    preprocessed batch): mean weight per expert (K,) and per query token (Q, K)."""
    key = model.modality_key(modality)
    shape = model.modalities[key].input_shape()
    if isinstance(inputs, torch.Tensor) and inputs.dim() == len(shape) + 1:
        x = inputs.to(model.device, model.dtype)
    else:
        raws = inputs if isinstance(inputs, list) else [inputs]
        x = torch.cat([model.preprocess(r, key) for r in raws])
    w = routing(model, x, key)  # (B, Q, K)
    return {
        "modality": key,
        "experts": model.projection.routes[key],
        "per_expert": w.mean(dim=(0, 1)).tolist(),
        "per_query": w.mean(dim=0).tolist(),
    }
