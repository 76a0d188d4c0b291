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
from onellm.modeling.llm_experts import recompute_context


def enable(model: Any) -> list[nn.Module]:
    """Recompute in backward: the projection's blocks (UPM: each expert's; perceiver: its
    layers), CLIP's and the LLM's layers. -> the projection blocks checkpointed. Only takes
    effect in train mode (HF's rule)."""
    # the LLM's experts route its recomputed layers as their forward (llm_experts.py)
    hf_enable(base_llm(model.llm), context_fn=recompute_context(model))
    hf_enable(model.encoder.clip)
    blocks = [b for p in (model.projection, *model.projections.values()) for b in p.blocks()]
    for block in blocks:
        checkpoint(block)
    return blocks


def hf_enable(model: Any, context_fn: Any = None) -> None:
    """transformers' own switch: `activation_checkpointing_enable` where the installed
    version has it, else its older name (the floor, 5.6, has only that one); `context_fn`:
    torch.utils.checkpoint's (a context for the forward and one for the recomputation)."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if context_fn is not None:
        kwargs["context_fn"] = context_fn
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
