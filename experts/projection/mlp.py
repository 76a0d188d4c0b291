"""LLaVA's projector as a projection kind: a 2-layer GELU MLP over every encoder token.

For modality m with encoder features f (B, S+1, W):
    out = out_norm_m(Linear(GELU(Linear(f))))          (B, S+1, D)
No query tokens: a modality gives the LLM as many tokens as the encoder gives (S+1), so
the token layout's run for <m> is S+3 long (with the tags). The MLP is shared by every
modality (LLaVA's `mlp2x_gelu`); each modality has its own tags and a LayerNorm whose
gain starts at the LLM's embedding scale (LLaVA has none; a tiny LLM is swamped without it).
"""

from __future__ import annotations

import torch
from torch import nn

from onellm.experts.projection.parts import add_tags
from onellm.modeling.projection import from_options
from onellm.registry import PROJECTIONS


class MLPProjection(nn.Module):
    """The projection kind `mlp`."""

    reads_frames = False

    def __init__(self, *, width: int, llm_width: int, hidden: int | None = None) -> None:
        super().__init__()
        self.width, self.llm_width = width, llm_width
        hidden = hidden or llm_width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, llm_width))
        self.out_norm = nn.ModuleDict()
        self.start_tag, self.end_tag = nn.ParameterDict(), nn.ParameterDict()
        self.tokens: dict[str, int] = {}  # modality -> S+1, the encoder tokens it gets

    def num_tokens(self, modality: str) -> int:
        return self.tokens[modality]

    def blocks(self) -> list[nn.Module]:
        """The heavy blocks (checkpointed, sharded): the MLP."""
        return [self.mlp]

    def add_modality(
        self, name: str, *, output_scale: float = 1.0, tokens_in: int, **_: object
    ) -> None:
        """Modality `name` (whose encoder output has `tokens_in` = S+1 tokens): its tags and
        output norm; the MLP is shared."""
        self.tokens[name] = tokens_in
        self.out_norm[name] = nn.LayerNorm(self.llm_width)
        with torch.no_grad():
            self.out_norm[name].weight.fill_(output_scale)
        add_tags(self.start_tag, self.end_tag, name, self.llm_width, output_scale)

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, S+1, W) encoder features -> (B, S+1, D) tokens for the LLM."""
        return self.out_norm[modality](self.mlp(features))


PROJECTIONS.register("mlp", from_options(MLPProjection))
