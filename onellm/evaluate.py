"""Held-out captioning metrics: exact match, BLEU-4 and CIDEr (pycocoevalcap's scorers)."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from onellm.data import shapes
from onellm.data.manifest import read_manifest
from onellm.errors import InputError


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().strip().rstrip(".")).strip()


def caption_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match (after normalising case, spaces and a final period), BLEU-4, CIDEr."""
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
    return {"exact_match": exact, "bleu4": float(bleu[3]), "cider": float(cider)}


@torch.no_grad()
def evaluate(
    model: Any,
    modality: str,
    *,
    samples: int = 50,
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
            r for r in read_manifest(data) if model.modality_key(r.modality) == key and r.caption
        ]
        inputs, refs = [r.input for r in records], [r.caption for r in records]
    was_training = model.training
    model.eval()
    preds: list[str] = []
    for i in range(0, len(inputs), batch_size):
        replies = model.chat(
            inputs[i : i + batch_size], modality=key, max_new_tokens=max_new_tokens
        )
        preds += [r.text for r in replies]
    model.train(was_training)
    result: dict[str, Any] = {"modality": key, "n": len(refs), **caption_metrics(preds, refs)}
    result["examples"] = [
        {"reference": r, "prediction": p} for r, p in list(zip(refs, preds, strict=True))[:5]
    ]
    return result


# task -> its metric; sam: SAM prompted by a point in the shape (its tiny-scale pretraining)
OUTPUT_METRICS = {"seg": "seg_miou", "gen": "gen_color_accuracy", "sam": "sam_point_miou"}


@torch.no_grad()
def evaluate_outputs(model: Any, task: str, *, samples: int = 50, seed: int = 0) -> dict[str, Any]:
    """Held-out output-expert metrics on the shapes world's test split, through `model.chat`.

    seg: `seg_miou`, the mean IoU of the first mask against the named shape's (a reply
    without `<seg>` scores 0). gen: `gen_color_accuracy`, the share of generated images
    whose foreground's dominant colour is the one asked for (no image: wrong). sam:
    `sam_point_miou`, the mean IoU of SAM's mask from a point inside the shape (no LLM).
    """
    from onellm.data import tasks

    if task not in OUTPUT_METRICS:
        raise InputError(f"eval: expected task one of {', '.join(OUTPUT_METRICS)}, got {task!r}")
    if task in ("seg", "sam"):
        key = next(k for k, m in model.modalities.items() if hasattr(m, "pixels"))
        size = model.modalities[key].input_shape()[-1]
    was_training = model.training
    model.eval()
    scores, examples = [], []
    try:
        for i in range(samples):
            if task in ("seg", "sam"):
                sc = tasks.seg_scene(i, "test", seed, size=size)
            if task == "sam":
                point = tasks.point_in(sc.mask, np.random.default_rng([seed, i, 11]))
                pixels = model.modalities[key].pixels(sc.image)[None]
                logits = model.decoders["seg"].prompted(pixels, points=torch.tensor([point]))
                score = tasks.iou(logits[0].cpu().numpy() > 0, sc.mask)
                reply = None
            elif task == "seg":
                reply = model.chat(sc.image, modality=key, prompt=sc.prompt, max_new_tokens=4)
                score = tasks.iou(reply.masks[0].cpu().numpy(), sc.mask) if reply.masks else 0.0
            else:
                n = model.config.outputs["gen"].tokens
                sc = tasks.gen_scene(
                    i, "test", seed, size=model.decoders["gen"].image_size, tokens=n
                )
                reply = model.chat(None, prompt=sc.prompt, max_new_tokens=n + 2)
                got = tasks.dominant_colour(np.asarray(reply.images[0])) if reply.images else None
                score = float(got == sc.attrs["colour"])
            scores.append(score)
            if len(examples) < 5:
                text = reply.text if reply is not None else f"point {point}"
                examples.append({"prompt": sc.prompt, "reply": text, "score": score})
    finally:
        model.train(was_training)
    return {"task": task, "n": samples, OUTPUT_METRICS[task]: float(np.mean(scores)),
            "examples": examples}  # fmt: skip
