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


# task -> its metrics. sam / t2i: a tiny decoder on its own (its pretraining, no LLM):
# SAM from a point inside the shape (and from the phrase naming it, with a text encoder);
# the UNet from the caption's text states
OUTPUT_METRICS = {
    "seg": ("seg_miou",),
    "gen": ("gen_color_accuracy",),
    "sam": ("sam_point_miou", "sam_text_miou"),
    "t2i": ("t2i_color_accuracy",),
}


@torch.no_grad()
def evaluate_outputs(model: Any, task: str, *, samples: int = 50, seed: int = 0) -> dict[str, Any]:
    """Held-out output-expert metrics on the shapes world's test split.

    seg: `seg_miou`, through `model.chat`, the mean IoU of the first mask against the named
    shape's (a reply without `<seg>` scores 0). gen: `gen_color_accuracy`, the share of
    generated images whose foreground's dominant colour is the one asked for (no image:
    wrong). sam: `sam_point_miou` (and `sam_text_miou`), SAM's masks from a point inside
    the shape (from the phrase). t2i: `t2i_color_accuracy`, the UNet under the caption.
    """
    from onellm.data import tasks

    if task not in OUTPUT_METRICS:
        raise InputError(f"eval: expected task one of {', '.join(OUTPUT_METRICS)}, got {task!r}")
    if task in ("seg", "sam"):
        key = next(k for k, m in model.modalities.items() if hasattr(m, "pixels"))
        size = model.modalities[key].input_shape()[-1]
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {}
    examples = []
    try:
        for i in range(samples):
            if task in ("seg", "sam"):
                sc = tasks.seg_scene(i, "test", seed, size=size)
            else:
                sc = tasks.gen_scene(i, "test", seed, size=model.decoders["gen"].image_size,
                                     tokens=model.config.outputs["gen"].tokens)  # fmt: skip
            if task == "sam":
                point = tasks.point_in(sc.mask, np.random.default_rng([seed, i, 11]))
                pixels = model.modalities[key].pixels(sc.image)[None]
                decoder = model.decoders["seg"]
                got = {"sam_point_miou": decoder.prompted(pixels, points=torch.tensor([point]))}
                if decoder.text is not None:
                    got["sam_text_miou"] = decoder.prompted(pixels, texts=[sc.phrase])
                score = {k: tasks.iou(v[0].cpu().numpy() > 0, sc.mask) for k, v in got.items()}
                text = f"point {point}"
            elif task == "seg":
                reply = model.chat(sc.image, modality=key, prompt=sc.prompt, max_new_tokens=4)
                iou = tasks.iou(reply.masks[0].cpu().numpy(), sc.mask) if reply.masks else 0.0
                score, text = {"seg_miou": iou}, reply.text
            else:
                if task == "gen":
                    n = model.config.outputs["gen"].tokens
                    reply = model.chat(None, prompt=sc.prompt, max_new_tokens=n + 2)
                    images, text = reply.images, reply.text
                else:
                    decoder = model.decoders["gen"]
                    images, text = decoder.sample(decoder.caption_states([sc.phrase])), sc.phrase
                got = tasks.dominant_colour(np.asarray(images[0])) if images else None
                score = {OUTPUT_METRICS[task][0]: float(got == sc.attrs["colour"])}
            for k, v in score.items():
                scores.setdefault(k, []).append(v)
            if len(examples) < 5:
                examples.append({"prompt": sc.prompt, "reply": text, **score})
    finally:
        model.train(was_training)
    return {"task": task, "n": samples, **{k: float(np.mean(v)) for k, v in scores.items()},
            "examples": examples}  # fmt: skip
