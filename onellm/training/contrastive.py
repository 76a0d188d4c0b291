"""Stage 0 for the tiny model: CLIP-style contrastive training of the universal encoder.

The vision tower is the model's own `CLIPVisionModel`; a small `CLIPTextModelWithProjection`
reads captions for the duration of the stage only. Captions repeat across scenes, so
every image whose caption matches counts as a positive (soft targets), not only the diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModelWithProjection


def zoom_out(pixels: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Images (N, [T,] C, H, W), sample i shrunk about its centre by `scales[i]` <= 1, the
    margin filled with its median border colour; a shape keeps its side of the image."""
    *_, c, h, w = pixels.shape
    x = pixels.reshape(len(pixels), -1, c, h, w)
    edge = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 0], x[..., -1]], -1)
    out = edge.median(-1).values[..., None, None].expand_as(x).clone()  # edge shapes don't tint
    sizes = [(max(1, round(h * s)), max(1, round(w * s))) for s in scales]
    for hh, ww in set(sizes):  # one resize per output size, not per sample
        idx = torch.tensor([i for i, size in enumerate(sizes) if size == (hh, ww)])
        if (hh, ww) == (h, w):
            out[idx] = x[idx]
            continue
        top, left = (h - hh) // 2, (w - ww) // 2
        small = F.interpolate(
            x[idx].flatten(0, 1),
            size=(hh, ww),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out[idx, :, :, top : top + hh, left : left + ww] = small.unflatten(0, (len(idx), -1))
    return out.reshape(pixels.shape)


class ContrastiveHead(nn.Module):
    """Text tower + vision projection + temperature, trained beside the encoder."""

    def __init__(self, *, width: int, vocab_size: int, dim: int = 64, max_len: int = 32) -> None:
        super().__init__()
        cfg = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=max(1, width // 32),
            max_position_embeddings=max_len,
            projection_dim=dim,
            hidden_act="quick_gelu",
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
        )
        self.text = CLIPTextModelWithProjection(cfg)
        self.visual_projection = nn.Linear(width, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP

    def loss(
        self,
        model,
        pixels: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        captions: list[str],
    ) -> torch.Tensor:
        """Symmetric cross-entropy between image (or clip: frame-mean) and caption embeddings,
        (B, [T,] 3, H, W) x (B, L)."""
        frames = pixels.shape[1] if pixels.dim() == 5 else 1  # (B, T, 3, H, W): video clips
        pooled = model.encoder.clip(pixel_values=pixels.flatten(0, pixels.dim() - 4)).pooler_output
        pooled = pooled.unflatten(0, (-1, frames)).mean(1)  # post-LN class token, frame mean
        image = F.normalize(self.visual_projection(pooled), dim=-1)
        # masked mean over caption tokens: HF's EOS pooling takes argmax(ids) when EOS is id 2
        hidden = self.text.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        text = F.normalize(self.text.text_projection((hidden * m).sum(1) / m.sum(1)), dim=-1)
        logits = image @ text.T * self.logit_scale.exp().clamp(max=100)
        same = torch.tensor(
            [[a == b for b in captions] for a in captions], dtype=logits.dtype, device=logits.device
        )
        targets = same / same.sum(-1, keepdim=True)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
