"""What every projection kind gives each modality beside its tokens (onellm/modeling/projection.py):
start/end tags and an output projection that starts at the LLM's embedding scale."""

from __future__ import annotations

import torch
from torch import nn


def scaled_out_proj(width: int, llm_width: int, output_scale: float) -> nn.Sequential:
    """Linear to the LLM's width, then a LayerNorm whose gain starts at `output_scale` (the
    RMS of the LLM's word embeddings), so modality tokens enter at the size words have."""
    proj = nn.Sequential(nn.Linear(width, llm_width), nn.LayerNorm(llm_width))
    with torch.no_grad():
        proj[1].weight.fill_(output_scale)
    return proj


def add_tags(
    start: nn.ParameterDict, end: nn.ParameterDict, name: str, llm_width: int, output_scale: float
) -> None:
    """Modality `name`'s start and end tag embeddings, (1, 1, D) at `output_scale`."""
    start[name] = nn.Parameter(torch.randn(1, 1, llm_width) * output_scale)
    end[name] = nn.Parameter(torch.randn(1, 1, llm_width) * output_scale)
