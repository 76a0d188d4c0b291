"""Held-out metrics: captions (exact match, BLEU-4 and CIDEr: pycocoevalcap's scorers),
question answering, and the output tasks'. A stage's sets of them: stage_eval.py."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from onellm.data import shapes
from onellm.data.manifest import read_manifest
from onellm.errors import InputError
from onellm.inference.messages import one_turn
from onellm.registry import TASKS
from onellm.training.task import output_tasks


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().strip().rstrip(".")).strip()


def caption_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match (after normalising case, spaces and a final period), BLEU-4, CIDEr."""
    # pycocoevalcap: heavy, loaded only to score
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"expected equal, non-empty lists, got {len(predictions)} and {len(references)}"
        )
    preds = {i: [normalise(p) or "<empty>"] for i, p in enumerate(predictions)}
    refs = {i: [normalise(r)] for i, r in enumerate(references)}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their progress
        bleu, _ = Bleu(4).compute_score(refs, preds)
        cider, _ = Cider().compute_score(refs, preds)
    exact = sum(preds[i][0] == refs[i][0] for i in preds) / len(preds)
    metrics = {"exact_match": exact, "bleu4": float(bleu[3]), "cider": float(cider)}
    # mean words per reference: BLEU-4 reads short captions badly (onellm/cli/evaluate.py)
    return metrics | {"ref_words": float(np.mean([len(r[0].split()) for r in refs.values()]))}


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
) -> dict[str, Any]:
    """Greedy captions of held-out inputs (the shapes world's test split, or a manifest)."""
    key = model.modality_key(modality)
    if data is None:
        scenes = shapes.sample(key, samples, split="test", seed=seed, model=model)
        inputs, refs = [s.input for s in scenes], [s.caption for s in scenes]
    else:
        records = [
            r
            for r in read_manifest(data)
            if not r.more and model.modality_key(r.modality) == key and r.caption
        ]
        inputs, refs = [r.input for r in records], [r.caption for r in records]
    preds: list[str] = []
    with eval_mode(model):
        for i in range(0, len(inputs), batch_size):
            asked = [one_turn({key: raw}) for raw in inputs[i : i + batch_size]]
            replies = model.chat(messages=asked, max_new_tokens=max_new_tokens)
            preds += [r.text for r in replies]
    result: dict[str, Any] = {"modality": key, "n": len(refs), **caption_metrics(preds, refs)}
    result["examples"] = [
        {"reference": r, "prediction": p} for r, p in list(zip(refs, preds, strict=True))[:5]
    ]
    return result


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
