"""The universal encoder: transformers' `CLIPVisionModel`, frozen, fed any modality's tokens.

OneLLM runs every modality through CLIP's trunk: class token, positional embedding (the
modality's own, or CLIP's for image-like inputs), pre-LN, all blocks, and post-LN on
*every* token (HF applies `post_layernorm` to the pooled token only, so we call it here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from onellm.config import EncoderConfig
from onellm.errors import CheckpointError
from onellm.modeling.positions import sincos_2d, with_class_slot


class UniversalEncoder(nn.Module):
    """Wraps a `CLIPVisionModel` (held as `.clip`, never subclassed)."""

    def __init__(self, clip: CLIPVisionModel) -> None:
        super().__init__()
        self.clip = clip
        self.clip.requires_grad_(False)

    @classmethod
    def build(cls, cfg: EncoderConfig) -> UniversalEncoder:
        """From a local HF dir (a CLIPModel or CLIPVisionModel), or random from `cfg`'s sizes."""
        if cfg.path is not None:
            if not Path(cfg.path).is_dir():
                raise CheckpointError(f"encoder: checkpoint directory not found: {cfg.path}")
            return cls(CLIPVisionModel.from_pretrained(cfg.path, local_files_only=True))
        config = CLIPVisionConfig(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
        )
        clip = CLIPVisionModel(config)
        grid = cfg.image_size // cfg.patch_size
        with (
            torch.no_grad()
        ):  # a random table carries no position; see onellm/modeling/positions.py
            clip.embeddings.position_embedding.weight.copy_(
                with_class_slot(sincos_2d(grid, grid, cfg.hidden_size))
            )
        return cls(clip)

    # sizes a modality tokenizer may read (the `EncoderInfo` protocol)
    @property
    def width(self) -> int:
        return self.clip.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.clip.config.image_size

    @property
    def patch_size(self) -> int:
        return self.clip.config.patch_size

    @property
    def position_embedding(self) -> torch.Tensor:
        """CLIP's own (1 + grid^2, W) positions, used by the image-like modalities."""
        return self.clip.embeddings.position_embedding.weight

    def patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, S, W) with CLIP's patch convolution (row-major over the grid)."""
        conv = self.clip.embeddings.patch_embedding
        return rearrange(conv(pixels.to(conv.weight.dtype)), "n w gh gw -> n (gh gw) w")

    def forward(
        self, tokens: torch.Tensor, position_embedding: torch.Tensor | None, pool: bool = True
    ) -> torch.Tensor:
        """(B, T, S, W) tokens -> (B, S+1, W) features, frames mean-pooled after encoding
        (`pool=False`: each frame's, (B, T, S+1, W))."""
        b, t, s, w = tokens.shape
        clip = self.clip
        pos = self.position_embedding if position_embedding is None else position_embedding
        if pos.shape != (s + 1, w):
            raise ValueError(
                f"positional embedding {tuple(pos.shape)} does not fit {s} tokens + class"
            )
        x = rearrange(tokens, "b t s w -> (b t) s w")
        cls = clip.embeddings.class_embedding.to(x.dtype).expand(x.shape[0], 1, w)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        x = clip.pre_layrnorm(x)
        x = clip.encoder(inputs_embeds=x).last_hidden_state
        x = clip.post_layernorm(x)
        x = rearrange(x, "(b t) s w -> b t s w", b=b)
        return x.mean(dim=1) if pool else x
