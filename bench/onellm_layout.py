"""OneLLM's own order of computation for the UPM, on our parameters: the same-run baseline.

As `model/LLM/onellm.py:encode_image` does it: the router runs on every row (queries and
features), each expert runs alone (a Python loop over K), and every layer of every expert
computes all Q+S+1 rows, though only the first Q rows of the last layer are used.
The result equals `UniversalProjection.forward` (checked by bench/step.py each run).
"""

from __future__ import annotations

import torch

from experts.projection import UniversalProjection


def onellm_forward(
    proj: UniversalProjection, features: torch.Tensor, modality: str
) -> torch.Tensor:
    f = proj.in_proj[modality](features)
    z = torch.cat([proj.queries[modality].expand(f.shape[0], -1, -1), f], dim=1)
    weights = proj.routers[modality](z)  # every row, as the reference
    q = proj.num_queries
    outs = []
    for k, expert in enumerate(proj.experts):
        x = z
        for layer in expert.layers:
            x = layer(x)
        outs.append(x[:, :q] * weights[:, :q, k, None])
    return proj.out_proj[modality](sum(outs))


class OneLLMLayout:
    """Context manager: `proj(features, modality)` runs `onellm_forward` while inside."""

    def __init__(self, proj: UniversalProjection) -> None:
        self.proj = proj

    def __enter__(self):
        self.proj.forward = lambda features, modality: onellm_forward(self.proj, features, modality)
        return self

    def __exit__(self, *exc) -> None:
        del self.proj.forward
