"""BLIP-3's token sampler (xGen-MM): a perceiver resampler as a projection kind.

For modality m with encoder features f, (B, S+1, W) or per frame (B, T, S+1, W):
    media   = f + time_emb[t]                          each frame's tokens know their frame
    latents = latents_m                                (Q, W), this modality's own
    repeat `layers` times (Flamingo/BLIP-3: the latents attend over media ++ latents):
        latents = latents + Attn(q=latents, kv=[media ; latents])
        latents = latents + FF(latents)
    out = out_proj_m(norm(latents))                    (B, Q, D)   D = LLM width
Any number of frames and any number of tokens go in; Q tokens come out. The layers are
shared by every modality (BLIP-3 has one sampler for images and frames); the latents,
output projection and tags are each modality's. `PerceiverResampler` is also MoAI's
compressor (experts/moai/mixer.py), where a mask leaves out padded tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from onellm.experts.projection.parts import add_tags, scaled_out_proj
from onellm.modeling.projection import from_options
from onellm.registry import PROJECTIONS


class PerceiverAttention(nn.Module):
    """Latents (B, Q, W) attend over media (B, N, W) ++ themselves; `valid` (B, N) masks media."""

    def __init__(self, *, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, inner = heads, heads * head_dim
        self.norm_media, self.norm_latents = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def forward(
        self, media: torch.Tensor, latents: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = rearrange(self.to_q(latents), "b q (h d) -> b h q d", h=self.heads)
        k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads)
            for t in self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        )
        mask = None
        if valid is not None:  # the latents are always valid keys, so no row is empty
            keep = torch.ones(latents.shape[:2], dtype=torch.bool, device=valid.device)
            mask = torch.cat([valid, keep], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b h q d -> b q (h d)"))


class PerceiverResampler(nn.Module):
    """`layers` x (attention over media ++ latents, feed-forward), then a LayerNorm."""

    def __init__(
        self, *, width: int, layers: int, heads: int, head_dim: int, ff_mult: int = 4
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(width=width, heads=heads, head_dim=head_dim),
                    nn.Sequential(
                        nn.LayerNorm(width),
                        nn.Linear(width, ff_mult * width, bias=False),
                        nn.GELU(),
                        nn.Linear(ff_mult * width, width, bias=False),
                    ),
                ]
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)

    def forward(
        self, media: torch.Tensor, latents: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """media (B, N, W), latents (B, Q, W), valid (B, N) bool or None -> (B, Q, W)."""
        for attn, ff in self.layers:
            latents = latents + attn(media, latents, valid)
            latents = latents + ff(latents)
        return self.norm(latents)


class PerceiverProjection(nn.Module):
    """The projection kind `perceiver`: shared resampler layers, per-modality latents."""

    reads_frames = True  # it takes (B, T, S+1, W): frames are not pooled before it

    def __init__(
        self,
        *,
        width: int,
        llm_width: int,
        num_queries: int,
        layers: int = 2,
        num_heads: int = 8,
        head_dim: int | None = None,
        ff_mult: int = 4,
        max_frames: int = 64,
    ) -> None:
        super().__init__()
        self.width, self.llm_width, self.num_queries = width, llm_width, num_queries
        self.resampler = PerceiverResampler(
            width=width,
            layers=layers,
            heads=num_heads,
            head_dim=head_dim or width // num_heads,
            ff_mult=ff_mult,
        )
        self.time = nn.Parameter(torch.zeros(max_frames, width))  # frame t's embedding
        self.latents = nn.ParameterDict()
        self.out_proj = nn.ModuleDict()
        self.start_tag, self.end_tag = nn.ParameterDict(), nn.ParameterDict()

    def num_tokens(self, modality: str) -> int:
        return self.num_queries

    def blocks(self) -> list[nn.Module]:
        """The heavy blocks (checkpointed, sharded): the resampler's layers."""
        return list(self.resampler.layers)

    def add_modality(self, name: str, *, output_scale: float = 1.0, **_: object) -> None:
        """Modality `name`'s latents, output projection and tags (the layers are shared)."""
        self.latents[name] = nn.Parameter(torch.randn(self.num_queries, self.width) * 0.02)
        self.out_proj[name] = scaled_out_proj(self.width, self.llm_width, output_scale)
        add_tags(self.start_tag, self.end_tag, name, self.llm_width, output_scale)

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, S+1, W) or (B, T, S+1, W) encoder features -> (B, Q, D) tokens for the LLM."""
        if features.dim() == 3:
            features = features.unsqueeze(1)
        b, t = features.shape[:2]
        if t > self.time.shape[0]:
            raise ValueError(f"perceiver: at most {self.time.shape[0]} frames, got {t}")
        media = rearrange(features + self.time[:t, None].to(features.dtype), "b t n w -> b (t n) w")
        latents = self.latents[modality].to(media.dtype).expand(b, -1, -1)
        return self.out_proj[modality](self.resampler(media, latents))


PROJECTIONS.register("perceiver", from_options(PerceiverProjection))
