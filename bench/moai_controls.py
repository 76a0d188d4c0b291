"""The MoAI study's controls for one trained row (docs/moai.md): held-out accuracy and loss
with each scene's own auxiliary words and with another scene's (`scene_qa.other_scene`),
how many tokens the words add to the LLM's context (aux as text) and how many the mixer's
cross-attention reads instead (MoAI).

    python -m bench.moai_controls RUN --task sceneqa|sceneqa_aux --out FILE.json

`sceneqa` on a MoAI model: the mixer reads the words (its sources, swapped for a source
that says another scene's words); `sceneqa_aux`: the words stand in the prompt as text.
Seed 1, as a stage's own held-out evaluation (the stage's seed + 1), so `own` is scored on
the scenes and questions the row's table figure was.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onellm import OneLLM
from onellm.data import scene_qa
from onellm.data.sources import Example
from onellm.inference.chat import pixels_of
from onellm.registry import TASKS
from onellm.tasks.sam import pixel_modality
from onellm.tasks.sceneqa import described, scene_words
from onellm.training.evaluate import eval_mode
from onellm.training.stage import SourceConfig
from onellm.training.task import Batching


def scenes(model: Any, samples: int, seed: int, shuffled: bool) -> Iterator[tuple[Any, Any]]:
    """Held-out scene i and the scene whose words it is given (itself, or another)."""
    size = model.modalities[pixel_modality(model)].input_shape()[-1]
    for i in range(samples):
        j = scene_qa.other_scene(i, samples) if shuffled else i
        yield scene_qa.scene(i, "test", seed, size=size), scene_qa.scene(j, "test", seed, size=size)


def words(model: Any, task: str, image: np.ndarray) -> str:
    """The row's auxiliary words about an image: its mixer's sources, or the baseline's."""
    if task == "sceneqa_aux":
        return scene_words(model, image)
    return model.moai.describe(model, [pixels_of(model, {pixel_modality(model): image})])[0]


def digest(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().cpu().numpy().tobytes()).hexdigest()


@contextlib.contextmanager
def others_words(model: Any, said: list[str], seed: int) -> Iterator[None]:
    """The MoAI model's sources replaced by one that says, for held-out scene i's image,
    what the real sources say about scene `other_scene(i)` (`said`: each scene's own words):
    the shuffled-aux control."""
    key, table = pixel_modality(model), {}
    for i, (sc, _) in enumerate(scenes(model, len(said), seed, shuffled=False)):
        table[digest(pixels_of(model, {key: sc.image}))] = said[scene_qa.other_scene(i, len(said))]
    kept = model.moai.sources
    model.moai.sources = [lambda pixels, model: table[digest(pixels)]]
    try:
        yield
    finally:
        model.moai.sources = kept


@torch.no_grad()
def held_out_loss(model: Any, task: str, samples: int, seed: int, shuffled: bool) -> float:
    """Mean loss per answer token of held-out scenes' questions (one of each kind, those
    the accuracy asks), with their own words or another scene's."""
    key = pixel_modality(model)
    examples = []
    for i, (sc, said) in enumerate(scenes(model, samples, seed, shuffled)):
        rng = np.random.default_rng([seed, i, 19])
        turns = [
            sc.questions[k][int(rng.integers(len(sc.questions[k])))]
            for k in scene_qa.KINDS
            if sc.questions[k]
        ]
        text = words(model, task, said.image)
        turns = described(turns, text) if task == "sceneqa_aux" else turns
        aux = text if model.moai is not None else None
        pixels = model.modalities[key].preprocess(sc.image).unsqueeze(0)
        examples.append(Example(pixels, None, turns, sc.image, aux=aux))
    cfg = SourceConfig(task=task, modality=key)
    batching = Batching(model, cfg, key, seed, list(range(len(examples))))
    total = count = 0.0
    with eval_mode(model):
        for part in range(0, len(examples), 16):
            for batch in TASKS.get(task).collate(examples[part : part + 16], batching):
                items = TASKS.get(task).items(batch)
                out = model(
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["labels"],
                    inputs=batch.get("inputs"),
                    aux=batch.get("aux"),
                    num_items_in_batch=torch.tensor(items),
                )
                total, count = total + float(out.loss) * items, count + items
    return total / count


def added_tokens(model: Any, samples: int, seed: int) -> float:
    """Mean tokens the aux-as-text prompt adds to a held-out question."""
    tok, added = model.text_tokenizer, []
    for sc, _ in scenes(model, samples, seed, shuffled=False):
        q = sc.questions["position"][0][0]
        with_words = scene_qa.with_words(q, scene_words(model, sc.image))
        added.append(len(tok(with_words)["input_ids"]) - len(tok(q)["input_ids"]))
    return float(np.mean(added))


@torch.no_grad()
def read_tokens(model: Any, said: list[str]) -> float:
    """Mean tokens the MoAI mixer's cross-attention reads for a held-out scene's words (its
    compressor's output: the perceiver's latents, or one per region its sources name)."""
    return float(np.mean([int(model.moai.compress(model, [w])[1].sum()) for w in said]))


def controls(model: Any, task: str, samples: int, loss_samples: int, seed: int = 1):
    t = time.perf_counter()
    out: dict[str, Any] = {
        "loss": {
            "own": held_out_loss(model, task, loss_samples, seed, shuffled=False),
            "shuffled": held_out_loss(model, task, loss_samples, seed, shuffled=True),
        }
    }
    if task == "sceneqa_aux":
        result = TASKS.get(task).evaluate(model, samples=samples, seed=seed, shuffled=True)
        out["tokens_added"] = added_tokens(model, samples, seed)
    else:
        said = [words(model, task, sc.image) for sc, _ in scenes(model, samples, seed, False)]
        with others_words(model, said, seed):
            result = TASKS.get(task).evaluate(model, samples=samples, seed=seed)
        out["tokens_read"] = read_tokens(model, said)
    out["shuffled"] = {k: result[k] for k in (*scene_qa.KINDS, "accuracy")}
    out["examples"] = result["examples"]
    out["seconds"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a trained run's directory (its final/ inside, or itself)")
    ap.add_argument("--task", choices=["sceneqa", "sceneqa_aux"], required=True)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--loss-samples", type=int, default=64)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    run = Path(args.run)
    model = OneLLM.from_pretrained(run / "final" if (run / "final").is_dir() else run).eval()
    result = controls(model, args.task, args.samples, args.loss_samples)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
