"""Per-row stopping criteria for a `generate` batch: transformers marks a row done once its
criterion says so (its later tokens are padding) and ends the call when every row is done.

`RowLimits`: each row's own token limit. `Cancelled`: a row nobody waits for any more
(a streaming client that left) stops at its next token and no longer holds the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria


class RowLimits(StoppingCriteria):
    """Row b is done after `limits[b]` new tokens (generate pads it while others go on)."""

    def __init__(self, limits: Sequence[int]) -> None:
        self.limits = torch.tensor(list(limits))
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.start is None:  # the first call follows the first new token
            self.start = input_ids.shape[1] - 1
        return (input_ids.shape[1] - self.start >= self.limits).to(input_ids.device)


class Cancelled(StoppingCriteria):
    """Row b is done once `checks[b]()` is true (None: never). Checked after every token, so
    a row cancelled while a token is being computed gets that token and no more."""

    def __init__(self, checks: Sequence[Callable[[], bool] | None]) -> None:
        self.checks = list(checks)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.tensor([bool(c is not None and c()) for c in self.checks])
        # beam search holds num_beams rows per conversation, one after another
        return done.repeat_interleave(input_ids.shape[0] // len(done)).to(input_ids.device)
