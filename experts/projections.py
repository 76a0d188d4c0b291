"""Projection kinds: how a modality's encoder features become its tokens for the LLM,
chosen by `projection.type` in the model YAML (the default `upm`: OneLLM's).

| type        | what                                                          | tokens per input |
| ----------- | ------------------------------------------------------------- | ---------------- |
| `upm`       | OneLLM's routed projection experts, per-modality queries       | `num_queries`    |
| `perceiver` | BLIP-3's token sampler: latents over media ++ latents, frames  | `num_queries`    |
| `mlp`       | LLaVA's 2-layer GELU MLP over every encoder token              | S+1 (encoder's)  |

A kind is built with `width` (the encoder's), `llm_width`, the shared sizes it names
(`num_queries`, `num_heads`) and its own `projection.options`; it gives what `Projection`
says. The model never asks which kind it holds: routing, experts and upcycling are the
UPM's own (`routes` present or not).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from experts.mlp_projection import MLPProjection
from experts.perceiver import PerceiverProjection
from experts.projection import UniversalProjection
from onellm.registry import Registry


class Projection(Protocol):
    """The contract of a projection kind (an `nn.Module`)."""

    reads_frames: bool  # forward takes (B, T, S+1, W) per-frame features, not their mean
    start_tag: nn.ParameterDict  # modality -> (1, 1, D)
    end_tag: nn.ParameterDict

    def add_modality(self, name: str, *, output_scale: float, experts: list[int] | None,
                     tokens_in: int) -> None: ...  # fmt: skip

    def num_tokens(self, modality: str) -> int: ...

    def blocks(self) -> list[nn.Module]: ...  # heavy blocks: checkpointed, FSDP-sharded

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor: ...


PROJECTIONS: Registry[type] = Registry("projection kind")
PROJECTIONS.register("upm", UniversalProjection)
PROJECTIONS.register("perceiver", PerceiverProjection)
PROJECTIONS.register("mlp", MLPProjection)
