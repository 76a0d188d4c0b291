"""The mixer contract (MoAI's, from a model config's `moai:` section, experts/moai/) and how
the model applies it: auxiliary texts about each row's image mixed into the LLM calls made
inside `model.mixing(...)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from onellm.errors import InputError
from onellm.modeling import llm_experts

if TYPE_CHECKING:
    from onellm.model import OneLLM


class Mixer(Protocol):
    """A mixer plug-in (an `nn.Module`, registered in `MIXERS`), joined to the LLM's layers."""

    def attach(self, llm: nn.Module) -> None: ...

    def describe(self, model: Any, pixels: Sequence[torch.Tensor | None]) -> list[str]:
        """Each row's auxiliary text from its image (3, H, W), or from nothing (None)."""
        ...

    def mixing(
        self,
        model: Any,
        input_ids: torch.Tensor,
        texts: Sequence[str],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> contextlib.AbstractContextManager[None]:
        """`texts`: one per row; packed rows (`position_ids` given): one per sample."""
        ...


@contextlib.contextmanager
def mixing(
    model: OneLLM,
    input_ids: torch.Tensor,
    aux: Sequence[str] | None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> Iterator[None]:
    """The LLM calls inside mix in the auxiliary texts `aux` (one per row of `input_ids`;
    `attention_mask`: its padding) through the model's mixer; without one, nothing happens
    (and `aux` is refused). The LLM's own experts (`llm_experts:`) route inside it too.
    `position_ids`: packed rows' (onellm/data/packing.py): one aux text per sample then."""
    if model.moai is None and aux is not None:
        raise InputError("aux: this model has no MoAI mixer (a `moai:` section), got aux texts")
    with contextlib.ExitStack() as stack:
        # the LLM's own experts route each position by its modality run (llm_experts.py)
        stack.enter_context(llm_experts.routing(model, input_ids, attention_mask, position_ids))
        if model.moai is not None:
            aux = [""] * len(input_ids) if aux is None else aux
            if position_ids is None:
                stack.enter_context(model.moai.mixing(model, input_ids, aux, attention_mask))
            else:  # each packed sample mixes with its own aux text, runs and text
                mix = model.moai.mixing(model, input_ids, aux, attention_mask, position_ids)
                stack.enter_context(mix)
        yield
