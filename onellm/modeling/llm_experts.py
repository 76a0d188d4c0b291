"""Experts inside the LLM (a model config's `llm_experts:`, experts/llm/): the contract a kind
keeps, and which modality each LLM position belongs to.

    llm_experts: {kind: lora_per_modality, r: 8, route: modality}
    llm_experts: {kind: moe_layers, layers: [1, 3], experts: 4, k: 2}

A position belongs to the modality of the last placeholder run at or before it: the run's
own tokens and the text that follows it, up to the next run (a row with several modalities
routes each run by its own modality). Positions before a row's first run (BOS, a system
prompt) belong to that first run, so a prompt with one modality is that modality's from end
to end, and a LoRA expert routed by modality can be merged into plain weights for it
(Phi-4-multimodal's per-modality LoRA covers the whole prompt the same way). A row with no
run is text's. What `generate` appends continues each row's last run. Padding belongs to
text's index too, and is marked not `valid`: no expert needs to run there.

A kind is built by onellm/modeling/build.py as
`LLM_EXPERTS.get(kind)(names=..., llm_width=..., llm_layers=..., **options)` (`names`:
`expert_names(layout.placeholder_ids)`, the index order of `PositionRoutes`), then
`attach(model)`; its own parameters live in the kind's module (`llm_experts.*`), the
LLM's stay the LLM's (`llm.*`: a LoRA's adapters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

TEXT = "text"  # the expert of rows that carry no modality


def expert_names(placeholder_ids: Mapping[str, int]) -> list[str]:
    """The routing order: text first, then the modalities in placeholder order."""
    return [TEXT, *placeholder_ids]


def position_modalities(
    input_ids: torch.Tensor,
    placeholder_ids: Mapping[str, int],
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L) ids laid out by onellm/modeling/layout.py -> (B, L) long: each position's index
    in `expert_names(placeholder_ids)` by the rule above (padding: text's, 0). Packed rows
    (onellm/data/packing.py: `position_ids` restart at each sample): the rule holds in each
    sample alone."""
    index = torch.zeros_like(input_ids)
    for i, pid in enumerate(placeholder_ids.values(), start=1):
        index = torch.where(input_ids == pid, torch.full_like(index, i), index)
    if attention_mask is not None:
        index = index.masked_fill(~attention_mask.bool(), 0)
    n = input_ids.shape[1]
    at = torch.arange(n, device=input_ids.device).expand_as(index)
    # where each position's sample starts: 0 unpacked
    start = at - position_ids.to(at.device) if position_ids is not None else torch.zeros_like(at)
    # carry each run's index forward over the text after it (the last run at or before a
    # position, in its sample); before a sample's first run, that first run's
    last = torch.where(index > 0, at, torch.full_like(at, -1)).cummax(dim=1).values
    ahead = torch.where(index > 0, at, torch.full_like(at, n)).flip(1).cummin(1).values.flip(1)
    first = ahead.clamp(max=n - 1)
    in_sample = (ahead < n) & (start.gather(1, first) == start)
    out = torch.where(
        last >= start,
        index.gather(1, last.clamp(min=0)),
        torch.where(in_sample, index.gather(1, first), torch.zeros_like(index)),
    )
    if attention_mask is not None:
        out = out.masked_fill(~attention_mask.bool(), 0)
    return out


@dataclass
class PositionRoutes:
    """Each position's expert index for one prompt (or training batch), and for the LLM calls
    `generate` makes after it: `for_call(length)` gives the (B, length) indices of a call over
    `length` positions, the whole sequence (training, a prefill, generate without a cache) or
    its newest positions (later cached steps), which continue each row's last run."""

    prompt: torch.Tensor  # (B, L) indices into `names`
    names: Sequence[str]
    valid: torch.Tensor | None = None  # (B, L) bool: False at padding; None: all valid

    @property
    def last(self) -> torch.Tensor:
        """(B,) the index of each row's last position (what generated text continues)."""
        return self.prompt[:, -1]

    def for_call(self, length: int) -> torch.Tensor:
        n = self.prompt.shape[1]
        if length >= n:
            tail = self.last[:, None].expand(-1, length - n)
            return torch.cat([self.prompt, tail], dim=1)
        return self.last[:, None].expand(-1, length)

    def valid_for_call(self, length: int) -> torch.Tensor:
        """(B, length) bool: the call's positions that are not padding (generated ones are)."""
        n = self.prompt.shape[1]
        valid = torch.ones_like(self.prompt, dtype=torch.bool) if self.valid is None else self.valid
        if length >= n:
            return torch.cat([valid, valid.new_ones(valid.shape[0], length - n)], dim=1)
        return valid.new_ones(valid.shape[0], length)

    @classmethod
    def of(
        cls,
        input_ids: torch.Tensor,
        placeholder_ids: Mapping[str, int],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> PositionRoutes:
        routes = position_modalities(input_ids, placeholder_ids, attention_mask, position_ids)
        valid = None if attention_mask is None else attention_mask.bool()
        return cls(routes, expert_names(placeholder_ids), valid)


@runtime_checkable
class LLMExperts(Protocol):
    """An `llm_experts:` kind (an `nn.Module` registered in `LLM_EXPERTS`), built with the
    model and joined to its LLM."""

    def attach(self, model: Any) -> None:
        """Join the model's LLM (wrap or hook its modules); called once the model is built."""
        ...

    def routing(self, routes: PositionRoutes) -> contextlib.AbstractContextManager[None]:
        """The LLM calls inside route each position by `routes` (entered by `model.mixing`)."""
        ...

    def add_modality(self, model: Any, name: str) -> None:
        """Experts for a new modality that leave every other modality's outputs unchanged."""
        ...


@runtime_checkable
class MergesExperts(Protocol):
    """A kind whose expert for one modality folds into the LLM's plain weights
    (`OneLLM.merge_llm_experts`)."""

    def merge(self, model: Any, name: str) -> None:
        """Fold `name`'s expert into the LLM's weights and leave the LLM a plain one."""
        ...


@runtime_checkable
class StartsFrom(Protocol):
    """A kind whose expert for one modality can start as another's (`init_modality_from`,
    add_modality's `init_from`) without changing any other modality's outputs."""

    def start_from(self, model: Any, name: str, source: str) -> None:
        """Copy `source`'s expert into `name`'s."""
        ...


@runtime_checkable
class Recomputes(Protocol):
    """A kind whose routing activation checkpointing must see again: the LLM's layers are
    recomputed in backward, after `routing` has closed."""

    def recompute(self) -> contextlib.AbstractContextManager[None]:
        """Called during a routed forward: a context, entered later, in which the LLM's
        calls route as this one does."""
        ...


def recompute_context(model: Any) -> Callable[[], tuple[Any, Any]] | None:
    """torch.utils.checkpoint's `context_fn` for the LLM's checkpointed layers
    (onellm/modeling/activation_checkpointing.py): the recomputation routes as the forward
    did. None when the model's experts need none."""
    experts = model.llm_experts
    if not isinstance(experts, Recomputes):
        return None
    return lambda: (contextlib.nullcontext(), experts.recompute())


@contextlib.contextmanager
def routing(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> Iterator[None]:
    """The LLM calls inside route by position through the model's `llm_experts` (if any);
    `position_ids`: packed rows' (each sample routes alone)."""
    experts = model.llm_experts
    if experts is None:
        yield
        return
    ids = model.layout.placeholder_ids
    routes = PositionRoutes.of(input_ids, ids, attention_mask, position_ids)
    with experts.routing(routes):
        yield
