"""sceneqa: spatial questions about several shapes (onellm/data/scene_qa.py): existence,
position, relation and count, 1-3 questions an example, the loss on the answers. Held out:
exact-match accuracy per kind, one question of each kind per scene asked alone through
`model.chat`. The projection and MoAI study trains and scores on it (docs/moai.md)."""

from __future__ import annotations

from typing import Any

import numpy as np

from onellm.data import scene_qa
from onellm.data.sources import Example
from onellm.evaluate import held_out
from onellm.tasks.base import register
from onellm.tasks.sam import pixel_modality
from onellm.tasks.text import TextTask


class SceneQuestions(TextTask):
    name = "sceneqa"
    synthetic_only = True
    metrics = (*scene_qa.KINDS, "accuracy")

    def use_turns(self, example, rng, b) -> bool:
        return True

    def example(self, source, i: int) -> Example:
        mod = source.model.modalities[source.modality]
        sc = scene_qa.scene(i, "train", source.seed, size=mod.input_shape()[-1])
        pool = [qa for kind in scene_qa.KINDS for qa in sc.questions[kind]]
        rng = np.random.default_rng([source.seed, i, 17])
        turns = [pool[j] for j in rng.choice(len(pool), min(3, len(pool)), replace=False)]
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


register(SceneQuestions())
