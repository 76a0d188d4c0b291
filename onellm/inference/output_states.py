"""From the states `generate` computed to a reply's masks and images.

The output experts (onellm/modeling/outputs.py and each output kind in experts/output/) read the last-layer hidden state at each output
token's own position. `generate` computes it when it feeds that token back to choose the
next one, so those states are kept (`output_hidden_states`); only a token that ends the
reply at `max_new_tokens` was never fed back, and gets one more step on the KV cache.
No second pass over prompt and reply.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from onellm.errors import InputError
from onellm.modeling.llm import base_llm

if TYPE_CHECKING:
    from onellm.model import OneLLM


def generated_states(model: OneLLM, out, prompt_embeds, attention_mask) -> torch.Tensor:
    """`generate`'s output (with hidden states) -> the last-layer state at each generated
    token's position (B, T, D). Step t's last row is the state of token t-1."""
    seq, steps = out.sequences, out.hidden_states
    states = [steps[t][-1][:, -1] for t in range(1, len(steps))]
    last = seq[:, -1:]
    ids = last.new_tensor(list(model.outputs.token_ids.values()))
    if not torch.isin(last, ids).any():  # no reply ends in an output token: nothing to add
        return torch.stack([*states, torch.zeros_like(steps[0][-1][:, -1])], dim=1)
    llm = base_llm(model.llm)
    embedding = llm.get_input_embeddings()
    mask = torch.cat([attention_mask, torch.ones_like(seq)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is not None:  # one step on the cache, for the last token only
        name = (
            "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
        )
        step = llm(
            inputs_embeds=embedding(last),
            attention_mask=mask,
            position_ids=positions[:, -1:],
            use_cache=True,
            output_hidden_states=True,
            **{name: cache},
        )
        return torch.stack([*states, step.hidden_states[-1][:, -1]], dim=1)
    # generate ran without a cache (use_cache=False): so does its last step, over everything
    embeds = torch.cat([prompt_embeds, embedding(seq)], dim=1)
    full = llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        output_hidden_states=True,
    )
    return full.hidden_states[-1][:, -seq.shape[1] :]


@torch.no_grad()
def attach_outputs(model: OneLLM, replies, out, prompt_embeds, attention_mask, pixels) -> None:
    """Fill `.masks` / `.images` of each reply whose generated tokens hold output tokens;
    `pixels`: per reply, the (3, H, W) image its masks are drawn on, or None."""
    seq = out.sequences
    if out.hidden_states[0][-1].shape[0] != seq.shape[0]:  # beam search: states of every beam
        raise InputError(
            f"outputs: masks and images are read from the states of the one decoded sequence, "
            f"got a reply with output tokens from {out.hidden_states[0][-1].shape[0]} beams "
            "(use num_beams=1)"
        )
    hidden = generated_states(model, out, prompt_embeds, attention_mask)
    embeds = model.llm.get_input_embeddings()(seq)
    for reply, fields in zip(
        replies, model.outputs.reply(seq, hidden, embeds, pixels), strict=True
    ):
        reply.outputs.update(fields)
