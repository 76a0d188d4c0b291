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


def enable(model: Any) -> list[nn.Module]:
    """Recompute in backward: every projection expert block, CLIP's and the LLM's layers.
    -> the expert blocks checkpointed. Only takes effect in train mode (HF's rule)."""
    from torch.distributed._composable import checkpoint

    kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    llm = model.llm.get_base_model() if hasattr(model.llm, "peft_config") else model.llm
    llm.gradient_checkpointing_enable(**kwargs)
    model.encoder.clip.gradient_checkpointing_enable(**kwargs)
    blocks = [layer for expert in model.projection.experts for layer in expert.layers]
    for block in blocks:
        checkpoint(block)
    return blocks
