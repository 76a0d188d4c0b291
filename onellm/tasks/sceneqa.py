"""sceneqa: spatial questions about several shapes (onellm/data/scene_qa.py): existence,
position, relation and count, 1-3 questions an example, the loss on the answers. Held out:
exact-match accuracy per kind, one question of each kind per scene asked alone through
`model.chat`. The projection and MoAI study trains and scores on it (docs/moai.md);
`sceneqa_lm` is its text alone, for the tiny LLM's language pretraining."""

from __future__ import annotations

from typing import Any

import numpy as np

from onellm.data import scene_qa
from onellm.data.sources import Example
from onellm.tasks.sam import pixel_modality
from onellm.training.evaluate import held_out
from onellm.training.task import Task, register
from onellm.training.text_tasks import TextTask


def scene_turns(source, i: int) -> tuple[scene_qa.SceneQA, list[tuple[str, str]]]:
    """Training scene i and 1-3 of its questions with their answers."""
    size = source.model.modalities[source.modality].input_shape()[-1]
    sc = scene_qa.scene(i, "train", source.seed, size=size)
    pool = [qa for kind in scene_qa.KINDS for qa in sc.questions[kind]]
    rng = np.random.default_rng([source.seed, i, 17])
    return sc, [pool[j] for j in rng.choice(len(pool), min(3, len(pool)), replace=False)]


class SceneQuestions(TextTask):
    name = "sceneqa"
    synthetic_only = True
    metrics = (*scene_qa.KINDS, "accuracy")

    def use_turns(self, example, rng, b) -> bool:
        return True

    def example(self, source, i: int) -> Example:
        mod = source.model.modalities[source.modality]
        sc, turns = scene_turns(source, i)
        return Example(mod.preprocess(sc.image).unsqueeze(0), None, turns, sc.image)

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        key = pixel_modality(model)
        size = model.modalities[key].input_shape()[-1]

        def score(i: int):
            sc = scene_qa.scene(i, "test", seed, size=size)
            rng = np.random.default_rng([seed, i, 19])
            got, asked = {}, []
            for kind in scene_qa.KINDS:
                if sc.questions[kind]:
                    q, a = sc.questions[kind][int(rng.integers(len(sc.questions[kind])))]
                    reply = model.chat(sc.image, modality=key, prompt=q, max_new_tokens=8).text
                    got[kind] = float(reply.strip().lower() == a)
                    asked.append(f"{q} -> {reply!r} ({a})")
            return (
                {**got, "accuracy": float(np.mean(list(got.values())))},
                asked[0],
                "; ".join(asked),
            )

        return held_out(model, self.name, samples, score)


class SceneLanguage(SceneQuestions):
    """sceneqa_lm: the same conversations as text alone, every token a target: the tiny
    LLM's stage 0 learns the words these questions and answers use, as a real LLM knows
    them before it ever sees an image."""

    name = "sceneqa_lm"
    needs_input = to_llm = False
    lm = length_grouped = True
    metrics = ()
    evaluate = Task.evaluate

    def example(self, source, i: int) -> Example:
        return Example(None, None, scene_turns(source, i)[1])


register(SceneQuestions())
register(SceneLanguage())
