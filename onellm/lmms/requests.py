"""What the lmms-eval model does with a request, apart from lmms-eval's classes: generation
options from a task's `generation_kwargs`, batches of rows that share them, the `until`
cut, and a continuation's log-probability with the inputs laid out as chat lays them out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from onellm.errors import InputError
from onellm.inference.chat import segments_of
from onellm.inference.messages import Dialogue, check_dialogue


def chat_options(gen_kwargs: Mapping[str, Any], default_max: int) -> dict[str, Any]:
    """A task's generation_kwargs -> model.chat's options: greedy unless sampling is asked
    for (temperature > 0 and do_sample not False), as lmms-eval's HF models read them."""
    sample = float(gen_kwargs.get("temperature") or 0) > 0 and gen_kwargs.get("do_sample", True)
    return {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or default_max),
        "temperature": float(gen_kwargs["temperature"]) if sample else 0.0,
        "top_p": float(gen_kwargs.get("top_p") or 1.0) if sample else 1.0,
    }


def generation_key(gen: Mapping[str, Any]) -> dict[str, Any]:
    """The generation kwargs that change a `generate` call (a batch shares them)."""
    return {k: gen.get(k) for k in ("max_new_tokens", "temperature", "top_p", "do_sample")}


def until_of(gen_kwargs: Mapping[str, Any], task: str) -> list[str]:
    """The task's stop strings (`until`: a string or a list of them)."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
        raise InputError(f"{task}: expected 'until' as a string or a list of them, got {until!r}")
    return until


def cut(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of `until` (lmms-eval's models cut the same way)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def batches(
    requests: Sequence[Any], size: int, options_of: Callable[[Any], Mapping[str, Any]]
) -> Iterator[list[int]]:
    """Indices of `requests` in batches of at most `size` whose task, generation options
    (one `generate` call has one max_new_tokens and temperature) and context are the same:
    one batched call per prompt, as `onellm eval` asks its questions, so that both pad the
    same rows together."""
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        key = json.dumps([req.task_name, options_of(req), req.args[0]], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), size):
            yield idx[start : start + size]


@torch.no_grad()
def continuation_logprob(
    model: Any, inputs: Mapping[str, Any], context: str, continuation: str
) -> tuple[float, bool]:
    """log p(continuation | inputs, context) under `model`, and whether greedy decoding
    would give exactly its tokens. The prompt is chat's (onellm/inference/chat.py: the
    inputs at their `<m>` placeholders, else first; an empty context is caption mode, the
    continuation straight after the inputs, as alignment trained it); the continuation is
    its answer, laid out as a training row lays out an answer: without lmms-eval's leading
    space (its `target_delimiter`), which the chat template's own spacing stands for."""
    continuation = continuation.lstrip()
    dialogue = Dialogue(dict(inputs), context if context.strip() else None)
    check_dialogue(model, dialogue)
    segments = [*segments_of(model, dialogue), (continuation, True)]
    ids, labels = model.layout.row(segments, list(inputs))
    x = {key: model.preprocess(raw, key) for key, raw in inputs.items()}
    input_ids = torch.tensor([ids], device=model.device)
    logits = model(input_ids, inputs=x).logits[0, :-1].float()
    targets = torch.tensor(labels[1:], device=model.device)
    scored = targets != -100
    if not bool(scored.any()):
        raise InputError("loglikelihood: expected a continuation with at least one token, got none")
    logprobs = torch.log_softmax(logits[scored], dim=-1)
    want = targets[scored]
    total = logprobs.gather(-1, want[:, None]).sum()
    greedy = bool((logprobs.argmax(-1) == want).all())
    return float(total), greedy
