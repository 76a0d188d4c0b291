"""Held-out metrics: captions (COCO's scores: onellm/evaluation/captions.py), question
answering, and the output tasks'. A stage's sets of them: stage_eval.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from onellm.data import shapes
from onellm.data.manifest import Manifest, read_manifest
from onellm.errors import InputError
from onellm.evaluation.captions import CaptionScorer, normalise, score_captions
from onellm.inference.messages import one_turn
from onellm.registry import TASKS
from onellm.training.task import output_tasks


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> dict[str, Any]:
    """A stage table's shapes-world caption scores: COCO's (exact match, BLEU-1..4, ROUGE-L,
    CIDEr) with the simple tokenizer and no METEOR. On the shapes world's plain captions it
    gives PTB's tokens (the demo's tables are the same figures either way), where Java's
    PTB call would add ~0.3 s and METEOR's start ~7 s to every modality of every stage
    evaluation (make demo, and every training test), and make the tables depend on
    whether Java is installed. `onellm eval` scores with Java (CaptionScorer)."""
    return score_captions(predictions, references, tokenizer="simple", meteor=False)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: Any,
    modality: str,
    *,
    samples: int = 100,
    seed: int = 0,
    data: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    prompt: str | None = None,
    scorer: CaptionScorer | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Greedy captions of held-out inputs (the shapes world's test split, or a manifest's
    records of the modality, scored against every caption of each), asked with `prompt`
    (None: the caption layout the caption task trains), scored by `scorer` (default: a
    manifest's with the PTB tokenizer where Java runs and no METEOR, the shapes world's by
    `caption_metrics`). The result pins what was asked: prompt, max_new_tokens, and a
    manifest's `lines`; `keep`: every prediction too, in order (the first five always)."""
    key = model.modality_key(modality)
    pinned: dict[str, Any] = {"prompt": prompt, "max_new_tokens": max_new_tokens}
    if data is None:
        scenes = shapes.sample(key, samples, split="test", seed=seed, model=model)
        inputs, refs = [s.input for s in scenes], [[s.caption] for s in scenes]
    else:
        manifest = Manifest(data, keep=lambda mods: len(mods) == 1)
        wanted = [
            (int(line), r)
            for line, r in zip(manifest.lines, manifest, strict=True)
            if model.modality_key(r.modality) == key and r.captions
        ]
        inputs, refs = [r.input for _, r in wanted], [r.captions for _, r in wanted]
        pinned["lines"] = spans([line for line, _ in wanted])
    preds: list[str] = []
    with eval_mode(model):
        for i in range(0, len(inputs), batch_size):
            asked = [one_turn({key: raw}, prompt) for raw in inputs[i : i + batch_size]]
            replies = model.chat(messages=asked, max_new_tokens=max_new_tokens)
            preds += [r.text for r in replies]
    if scorer is not None:
        scores = scorer.score(preds, refs)
    elif data is not None:  # a user's captions: PTB's tokens where Java runs (~0.3 s)
        scores = score_captions(preds, refs, meteor=False)
    else:
        scores = caption_metrics(preds, refs)
    result: dict[str, Any] = {"modality": key, **scores, **pinned}
    result["examples"] = [
        {"reference": r[0], "prediction": p} for r, p in list(zip(refs, preds, strict=True))[:5]
    ]
    return result | ({"predictions": preds} if keep else {})


def spans(lines: Sequence[int]) -> str:
    """Line numbers as runs: [1, 2, 3, 7] -> "1-3,7"."""
    runs: list[list[int]] = []
    for n in lines:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


@torch.no_grad()
def evaluate_qa(
    model: Any,
    modality: str,
    *,
    samples: int = 60,
    seed: int = 0,
    data: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Held-out question answering: greedy `model.chat(input, prompt=question)` against the
    answer, exact match after `normalise`, over every question the shapes world asks of
    `samples` test scenes (or every question-answer turn of a manifest's conversations,
    each asked alone). -> `qa_accuracy` and, per question, its correct and total counts."""
    key = model.modality_key(modality)
    if data is None:
        scenes = shapes.sample(key, samples, split="test", seed=seed, model=model)
        asked = [(s.input, q, a) for s in scenes for q, a in s.qa]
    else:
        asked = [
            (r.input, q, a)
            for r in read_manifest(data)
            if not r.more and model.modality_key(r.modality) == key
            for q, a in r.turns
        ]
    by_question: dict[str, list[tuple[Any, str]]] = {}
    for raw, q, a in asked:  # one batched chat per question: a shared prompt
        by_question.setdefault(q, []).append((raw, a))
    preds: dict[str, list[str]] = {}
    with eval_mode(model):
        for q, items in by_question.items():
            preds[q] = []
            for i in range(0, len(items), batch_size):
                asked = [one_turn({key: raw}, q) for raw, _ in items[i : i + batch_size]]
                replies = model.chat(messages=asked, max_new_tokens=max_new_tokens)
                preds[q] += [r.text for r in replies]
    return qa_metrics(key, {q: [a for _, a in items] for q, items in by_question.items()}, preds)


def qa_metrics(modality: str, answers: dict[str, list[str]], preds: dict[str, list[str]]):
    """Exact-match accuracy overall and per question ({question: {correct, n}})."""
    by = {}
    examples = []
    for q, truth in answers.items():
        got = [normalise(p) == normalise(t) for p, t in zip(preds[q], truth, strict=True)]
        by[q] = {"correct": int(sum(got)), "n": len(got)}
        examples += [
            {"question": q, "answer": t, "prediction": p}
            for p, t in list(zip(preds[q], truth, strict=True))[:2]
        ]
    n = sum(v["n"] for v in by.values())
    if not n:
        raise InputError(
            f"{modality}: expected questions to ask (scenes with qa or conversations), got none"
        )
    accuracy = sum(v["correct"] for v in by.values()) / n
    return {
        "modality": modality,
        "n": n,
        "qa_accuracy": accuracy,
        "by_question": by,
        "examples": examples,
    }


def evaluate_outputs(model: Any, task: str, *, samples: int = 50, seed: int = 0) -> dict[str, Any]:
    """Held-out metrics of an output task (seg, gen, sam, t2i: each task's `evaluate`,
    onellm/tasks/) on the shapes world's test split."""
    if task not in output_tasks():
        raise InputError(f"eval: expected task one of {', '.join(output_tasks())}, got {task!r}")
    return TASKS.get(task).evaluate(model, samples=samples, seed=seed)


@torch.no_grad()
def held_out(model: Any, task: str, samples: int, score) -> dict[str, Any]:
    """Run `score(i) -> ({metric: value}, prompt, reply)` over held-out scenes 0..samples-1
    with the model in eval mode; -> the task's mean metrics and its first five examples."""
    scores: dict[str, list[float]] = {}
    examples = []
    with eval_mode(model):
        for i in range(samples):
            got, prompt, text = score(i)
            for k, v in got.items():
                scores.setdefault(k, []).append(v)
            if len(examples) < 5:
                examples.append({"prompt": prompt, "reply": text, **got})
    return {
        "task": task,
        "n": samples,
        **{k: float(np.mean(v)) for k, v in scores.items()},
        "examples": examples,
    }
