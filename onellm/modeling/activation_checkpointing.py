"""Activation checkpointing (`activation_checkpointing: true` in a stage): each block's
activations are recomputed in backward instead of kept, trading ~1/3 more compute for
memory that no longer grows with depth (OneLLM's instruction stage does it for its 7B LLM).

The LLM and CLIP use transformers' own `gradient_checkpointing_enable`; the projection
experts' blocks use torch's composable `checkpoint`, which keeps parameter names (no
wrapper module), so trainable globs and checkpoints read the same, and composes with
FSDP2's `fully_shard` on the same blocks.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed._composable import checkpoint

from onellm.modeling.llm import base_llm


def enable(model: Any) -> list[nn.Module]:
    """Recompute in backward: the projection's blocks (UPM: each expert's; perceiver: its
    layers), CLIP's and the LLM's layers. -> the projection blocks checkpointed. Only takes
    effect in train mode (HF's rule)."""
    for part in (base_llm(model.llm), model.encoder.clip):
        hf_enable(part)
    blocks = [b for p in (model.projection, *model.projections.values()) for b in p.blocks()]
    for block in blocks:
        checkpoint(block)
    return blocks


def hf_enable(model: Any) -> None:
    """transformers' own switch: `activation_checkpointing_enable` where the installed
    version has it, else its older name (the floor, 5.6, has only that one)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
