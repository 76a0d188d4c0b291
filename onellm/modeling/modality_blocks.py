"""A modality's input -> its block of LLM embeddings, along the composition root's parts:

raw --preprocess--> (1, *input_shape) --features: tokenizer_m, universal encoder-->
(B, S+1, W) --encode: the modality's projection--> (B, N, D) --modality_block-->
[start tag, N tokens, end tag] (B, N+2, D), what fills the run of `<m>` placeholders.

`OneLLM` holds these as its methods (`model.features(x, "image")`): each takes the model
first and reaches the others through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from onellm.errors import InputError
from onellm.modeling.modality import check_batch

if TYPE_CHECKING:
    from onellm.model import OneLLM


def modality_key(model: OneLLM, modality: str) -> str:
    """The config key for `modality` (or an alias such as rgbd/rgbn); `InputError` if absent."""
    if modality not in model.names:
        raise InputError(
            f"unknown modality {modality!r}: expected one of {', '.join(sorted(model.names))}"
        )
    return model.names[modality]


def projector(model: OneLLM, modality: str) -> nn.Module:
    """The projection modality `modality` goes through: `projection`, or the kind
    `projection.by_modality` names for it."""
    kind = model.base_config.projection.kind_of(model.modality_key(modality))
    return model.projection if kind is None else model.projections[kind]


def preprocess(model: OneLLM, raw: Any, modality: str) -> torch.Tensor:
    """One raw input -> its (1, *input_shape) batch on the model's device and dtype."""
    key = model.modality_key(modality)
    return model.modalities[key].preprocess(raw).unsqueeze(0).to(model.device, model.dtype)


def features(model: OneLLM, x: torch.Tensor, modality: str) -> torch.Tensor:
    """Checked batch -> tokenizer -> universal encoder -> features (B, S+1, W), or per
    frame (B, T, S+1, W) for a projection that reads frames."""
    key = model.modality_key(modality)
    check_batch(key, x, model.modalities[key].input_shape())
    tokenizer, encoder = model.tokenizers[key], model.encoder
    trains = any(p.requires_grad for m in (tokenizer, encoder) for p in m.parameters())
    # keep the frozen encoder out of autograd when nothing before it trains
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
        tokens = tokenizer(x.to(encoder.clip.dtype), encoder)
        pool = not model.projector(key).reads_frames  # a perceiver reads each frame
        return encoder(tokens, tokenizer.position_embedding, pool=pool)


def encode(model: OneLLM, x: torch.Tensor, modality: str, *, cached: bool = False) -> torch.Tensor:
    """(B, *input_shape) -> the modality's N tokens in LLM space (B, N, D) (N: the
    projection's `num_tokens`); `cached`: x is already the encoder's features."""
    key = model.modality_key(modality)
    return model.projector(key)(x if cached else model.features(x, key), key)


def modality_block(
    model: OneLLM, x: torch.Tensor, modality: str, *, cached: bool = False
) -> torch.Tensor:
    """(B, *input_shape) -> [start tag, N tokens, end tag] embeddings (B, N+2, D)."""
    key = model.modality_key(modality)
    tokens = model.encode(x, key, cached=cached)
    proj = model.projector(key)
    start, end = (
        t[key].to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for t in (proj.start_tag, proj.end_tag)
    )
    return torch.cat([start, tokens, end], dim=1)
