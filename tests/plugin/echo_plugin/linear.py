"""A `linear` projection kind: one linear map from the encoder's pooled class token to
`num_queries` LLM tokens per modality, with the start and end tags every kind has."""

import torch
from torch import nn

from onellm.modeling.projection import from_options
from onellm.registry import PROJECTIONS


class LinearProjection(nn.Module):
    reads_frames = False

    def __init__(self, *, width: int, llm_width: int, num_queries: int = 4) -> None:
        super().__init__()
        self.llm_width, self.num_queries = llm_width, num_queries
        self.proj = nn.Linear(width, num_queries * llm_width)
        self.start_tag, self.end_tag = nn.ParameterDict(), nn.ParameterDict()

    def add_modality(self, name, *, output_scale, experts, tokens_in):
        for tags in (self.start_tag, self.end_tag):
            tags[name] = nn.Parameter(torch.randn(1, 1, self.llm_width) * output_scale)

    def num_tokens(self, modality: str) -> int:
        return self.num_queries

    def blocks(self) -> list[nn.Module]:
        return []

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, S+1, W) -> (B, num_queries, D) from the class token."""
        return self.proj(features[:, 0]).view(features.shape[0], self.num_queries, -1)


PROJECTIONS.register("linear", from_options(LinearProjection))
