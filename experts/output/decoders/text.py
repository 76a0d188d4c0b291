"""A decoder's own text encoder: what the output heads are aligned to (NExT-GPT's L2).

Stable Diffusion brings its CLIP text encoder, and NExT-GPT trains its `<gen>` head with
an L2 from the head's output to that encoder's caption states as well as the denoising
loss: a direct target is far easier to learn from than the denoising gradient alone. The
tiny decoders have no released encoder, so each can carry a small CLIP text tower,
pretrained with its decoder (stage 5a: caption -> image for the UNet; phrase -> mask for
SAM, as the SAM paper's text prompts), then frozen: stage 5 aligns the heads to it.

The tiny tower reads the LLM's own tokenizer (the words of the shapes world), given at
construction (`tokenizer` is not a parameter and is not saved with the decoder).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from onellm.errors import ConfigError


class CaptionEncoder(nn.Module):
    """Texts -> (B, length, out_dim) token states (padded to `length`), or their masked mean."""

    def __init__(
        self,
        *,
        vocab_size: int,
        out_dim: int,
        width: int = 64,
        layers: int = 2,
        length: int = 8,
        token_std: float = 1.0,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        cfg = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 32),
            max_position_embeddings=length,
            hidden_act="quick_gelu",
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
        )
        self.model = CLIPTextModel(cfg)
        # CLIP starts its word embeddings at std 0.02: after the final LayerNorm, phrases then
        # differ by a small part of their norm and SAM learned text prompts slowly (held-out
        # mIoU 0.33 / 0.54 at 200 / 400 steps; at std 1: 0.55 / 0.71; a learned vector per
        # phrase: 0.58 / 0.82). At std 1 the words dominate the residual stream from the start.
        nn.init.normal_(self.model.get_input_embeddings().weight, std=token_std)
        self.proj = nn.Linear(width, out_dim)
        self.length = length
        self.tokenizer = tokenizer  # the LLM's text tokenizer (not a parameter, not saved)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError("caption encoder: no tokenizer given (build it through OneLLM)")
        t = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.length,
            truncation=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        device = self.proj.weight.device
        return t["input_ids"].to(device), t["attention_mask"].to(device)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> token states (B, length, out_dim) and the attention mask (B, length)."""
        ids, mask = self.tokenize(texts)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.proj(hidden), mask

    def pooled(self, texts: list[str]) -> torch.Tensor:
        """-> the masked mean of the token states, (B, out_dim)."""
        states, mask = self(texts)
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)


def caption_encoder(spec: dict | None, out_dim: int, tokenizer):
    """A tiny caption encoder reading `tokenizer` (the LLM's), if `spec` asks for one."""
    if spec is None:
        return None
    return CaptionEncoder(out_dim=out_dim, tokenizer=tokenizer, **spec)
