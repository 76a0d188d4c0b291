"""sceneqa: spatial questions about several shapes (onellm/data/scene_qa.py): existence,
position, relation and count, 1-3 questions an example, the loss on the answers. Held out:
exact-match accuracy per kind, one question of each kind per scene asked alone through
`model.chat`. The projection and MoAI study trains and scores on it (docs/moai.md).

Its kin: `sceneqa_aux`, the aux-as-text baseline: the first question carries what MoAI's
auxiliary sources say about the image (`AUX_SOURCES`, the study's MoAI sources) in front
of it, in training and held out alike (`scene_qa.with_words`), no compressor, no mixer;
`sceneqa_lm`, the questions' text alone, and `sceneqa_describe_lm`, the colour detector's
description of each scene before its questions, both for the tiny LLM's language
pretraining (a real LLM answers from a description in its context; the tiny one learns it)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from onellm.data import scene_qa
from onellm.data.sources import Example
from onellm.inference.chat import pixels_of
from onellm.registry import AUXILIARY
from onellm.tasks.sam import pixel_modality
from onellm.training.evaluate import held_out
from onellm.training.task import Task, register
from onellm.training.text_tasks import TextTask

# what configs/stages/study_moai.yaml's mixer reads: the model's own SAM, then the colour
# detector, each region as "red circle, top left" (experts/moai/auxiliary.py)
WORDS = (("coordinates", False), ("shapes", ("square", "circle", "triangle")))
AUX_SOURCES = (("sam", WORDS), ("components", WORDS))


@functools.cache
def sources(names: tuple[tuple[str, tuple], ...]) -> list[Any]:
    return [AUXILIARY.get(name)(**dict(options)) for name, options in names]


def scene_words(model, image: np.ndarray, names=AUX_SOURCES) -> str:
    """What the sources `names` say about a scene's image, joined as MoAI joins them."""
    px = pixels_of(model, {pixel_modality(model): image})
    return " | ".join(filter(None, (str(s(px, model)) for s in sources(names))))


def scene_turns(source, i: int) -> tuple[scene_qa.SceneQA, list[tuple[str, str]]]:
    """Training scene i and 1-3 of its questions with their answers."""
    size = source.model.modalities[source.modality].input_shape()[-1]
    sc = scene_qa.scene(i, "train", source.seed, size=size)
    pool = [qa for kind in scene_qa.KINDS for qa in sc.questions[kind]]
    rng = np.random.default_rng([source.seed, i, 17])
    return sc, [pool[j] for j in rng.choice(len(pool), min(3, len(pool)), replace=False)]


def described(turns: list[tuple[str, str]], words: str) -> list[tuple[str, str]]:
    """The conversation with the description before its first question."""
    (q, a), *rest = turns
    return [(scene_qa.with_words(q, words), a), *rest]


class SceneQuestions(TextTask):
    name = "sceneqa"
    synthetic_only = True
    metrics = (*scene_qa.KINDS, "accuracy")

    def use_turns(self, example, rng, b) -> bool:
        return True

    def example(self, source, i: int) -> Example:
        mod = source.model.modalities[source.modality]
        sc, turns = scene_turns(source, i)
        return Example(
            mod.preprocess(sc.image).unsqueeze(0), None, self.turns(source, sc, turns), sc.image
        )

    def turns(self, source, sc: scene_qa.SceneQA, turns: list[tuple[str, str]]):
        return turns

    def words(self, model, sc: scene_qa.SceneQA) -> str:
        """The description put before a held-out question ("": none)."""
        return ""

    def evaluate(self, model, *, samples: int, seed: int, shuffled: bool = False) -> dict[str, Any]:
        """`shuffled`: each scene asked with another held-out scene's words (the control)."""
        return ask(model, self.name, samples, seed, self.words, image=True, shuffled=shuffled)


class SceneQuestionsAux(SceneQuestions):
    """sceneqa_aux: MoAI's auxiliary words as text before the question (no mixer)."""

    name = "sceneqa_aux"

    def turns(self, source, sc, turns):
        return described(turns, scene_words(source.model, sc.image))

    def words(self, model, sc):
        return scene_words(model, sc.image)


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


class SceneDescriptions(SceneLanguage):
    """sceneqa_describe_lm: description -> questions -> answers as text, the loss on the
    answers (with every token a target it stayed at chance: docs/moai.md). The description is what the colour detector's verbaliser says about the scene
    (MoAI's `components` source), once or, half the time, twice as two agreeing sources
    would ("... | ..."). Held out: text-only exact match per kind, the scene's words before
    each question, no image: whether the LLM reads a description in its context."""

    name = "sceneqa_describe_lm"
    metrics = (*scene_qa.KINDS, "accuracy")
    lm = False  # the loss on the answers alone: the description is context, not text to learn
    NAMES = (("components", WORDS),)

    def example(self, source, i: int) -> Example:
        sc, turns = scene_turns(source, i)
        words = scene_words(source.model, sc.image, self.NAMES)
        if np.random.default_rng([source.seed, i, 23]).random() < 0.5:
            words = f"{words} | {words}"
        return Example(None, None, described(turns, words))

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        def words(model, sc):
            return scene_words(model, sc.image, self.NAMES)

        return ask(model, self.name, samples, seed, words, image=False)


def ask(model, task: str, samples: int, seed: int, words, *, image: bool, shuffled=False):
    """Held-out scenes 0..samples-1, one question of each kind asked alone (with the image
    or as text only), `words(model, scene)` before it; exact match per kind."""
    size = model.modalities[pixel_modality(model)].input_shape()[-1]

    def score(i: int):
        sc = scene_qa.scene(i, "test", seed, size=size)
        said = scene_qa.scene(scene_qa.other_scene(i, samples), "test", seed, size=size)
        context = words(model, said if shuffled else sc)
        rng = np.random.default_rng([seed, i, 19])
        got, asked = {}, []
        for kind in scene_qa.KINDS:
            if sc.questions[kind]:
                q, a = sc.questions[kind][int(rng.integers(len(sc.questions[kind])))]
                prompt = scene_qa.with_words(q, context)
                seen = (sc.image, pixel_modality(model)) if image else (None, None)
                reply = model.chat(seen[0], modality=seen[1], prompt=prompt, max_new_tokens=8)
                got[kind] = float(reply.text.strip().lower() == a)
                asked.append(f"{prompt} -> {reply.text!r} ({a})")
        return {**got, "accuracy": float(np.mean(list(got.values())))}, asked[0], "; ".join(asked)

    return held_out(model, task, samples, score)


register(SceneQuestions())
register(SceneQuestionsAux())
register(SceneLanguage())
register(SceneDescriptions())
