"""Output experts: the LLM's hidden states at special tokens (`<seg>`, `<gen>`, ...), routed
to task decoders through learned projection experts (DESIGN.md, "output experts").

Routing is by the token the model emitted: every position holding task t's token id
sends its last-layer hidden state (and, optionally, that token's input embedding) to
task t's head. A head is K small expert MLPs mixed per token by a soft router (the same
router family as the UPM's), ending in the decoder's prompt space:

    seg: (N, D) -> (N, C_sam)                    one SAM sparse prompt per <seg>
    gen: (N, D) -> experts -> small transformer decoding L learned queries over the N
         signal states -> (L, C_cross)           encoder_hidden_states for a UNet
"""

from __future__ import annotations

import torch
from torch import nn

from onellm.registry import ROUTERS


class ExpertMix(nn.Module):
    """K two-layer MLP experts, mixed per token by a soft router: (N, in) -> (N, out)."""

    def __init__(
        self, *, in_dim: int, out_dim: int, num_experts: int, hidden: int, router: str = "soft"
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
            for _ in range(num_experts)
        )
        self.router = ROUTERS.build(router, width=in_dim, hidden=hidden, num_experts=num_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> mixed output (N, out) and routing weights (N, K)."""
        w = self.router(x)
        y = torch.einsum("kno,nk->no", torch.stack([e(x) for e in self.experts]), w)
        return y, w


class SegHead(nn.Module):
    """`<seg>` states -> one prompt embedding each for SAM's mask decoder (LISA's text_hidden_fcs)."""

    def __init__(
        self,
        *,
        llm_width: int,
        out_dim: int,
        num_experts: int = 2,
        use_embedding: bool = True,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.use_embedding = use_embedding
        in_dim = llm_width * (2 if use_embedding else 1)
        self.mix = ExpertMix(
            in_dim=in_dim, out_dim=out_dim, num_experts=num_experts, hidden=hidden or llm_width
        )

    def forward(self, states: torch.Tensor, embeddings: torch.Tensor | None = None):
        """(N, D) hidden states [+ (N, D) input embeddings] -> (N, out_dim), weights (N, K)."""
        x = torch.cat([states, embeddings], -1) if self.use_embedding else states
        return self.mix(x)


class GenHead(nn.Module):
    """A group of N `<gen>` signal states -> (L, out_dim) conditioning for a diffusion UNet.

    NExT-GPT's output projector: per-token experts into a small transformer's width, then
    L learned queries decode over the N signal states (cross-attention).
    """

    def __init__(
        self,
        *,
        llm_width: int,
        out_dim: int,
        num_experts: int = 2,
        use_embedding: bool = True,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        num_queries: int = 8,
    ) -> None:
        super().__init__()
        self.use_embedding = use_embedding
        in_dim = llm_width * (2 if use_embedding else 1)
        self.mix = ExpertMix(in_dim=in_dim, out_dim=width, num_experts=num_experts, hidden=width)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, states: torch.Tensor, embeddings: torch.Tensor | None = None):
        """(G, N, D) states of G groups of N signal tokens -> (G, L, out_dim), weights (G, N, K)."""
        g, n, _ = states.shape
        x = torch.cat([states, embeddings], -1) if self.use_embedding else states
        y, w = self.mix(x.reshape(g * n, -1))
        memory = y.reshape(g, n, -1)
        q = self.queries.expand(g, -1, -1)
        return self.out(self.decoder(q, memory)), w.reshape(g, n, -1)


def token_states(
    ids: torch.Tensor, hidden: torch.Tensor, embeds: torch.Tensor, token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions holding `token_id` in (B, L) ids -> their hidden states (N, D), input
    embeddings (N, D) and sample index (N,), in reading order (sample, then position)."""
    where = ids == token_id
    batch_index = where.nonzero()[:, 0]
    return hidden[where], embeds[where], batch_index
