"""The MoAI study's tasks (onellm/tasks/sceneqa.py): the aux-as-text baseline's prompt is
the sceneqa prompt with the auxiliary words before it and nothing else changed; stage 0's
description text says what the scene holds; the shuffled control gives another scene's
words (bench/moai_controls.py)."""

from __future__ import annotations

import pytest
import torch

from bench import moai_controls
from onellm import OneLLM
from onellm.data import scene_qa
from onellm.data.sources import Source
from onellm.registry import TASKS
from onellm.tasks.sceneqa import scene_words
from onellm.training.stage import SourceConfig
from tests.conftest import TINY

PLACES = {0: "top left", 1: "top right", 2: "bottom left", 3: "bottom right"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OneLLM.from_config(TINY).eval()


def source(model, task: str) -> Source:
    return Source(model, "image", SourceConfig(task=task, pool=8, modality="image"), seed=0)


@pytest.mark.parametrize("i", range(4))
def test_aux_as_text_prepends_the_words_and_changes_nothing_else(model, i):
    plain = TASKS.get("sceneqa").example(source(model, "sceneqa"), i)  # training scene i
    aux = TASKS.get("sceneqa_aux").example(source(model, "sceneqa_aux"), i)
    sc = scene_qa.scene(i, "train", 0, size=64)
    words = scene_words(model, sc.image)
    assert words.split(" | ")[-1].count(";") + 1 == len(sc.shapes)  # the detector: each shape
    (q0, a0), *rest = plain.turns
    assert aux.turns == [(f"{words}\n{q0}", a0), *rest]
    assert torch.equal(aux.input, plain.input)


@pytest.mark.parametrize("i", range(6))
def test_the_description_text_agrees_with_the_scene(model, i):
    ex = TASKS.get("sceneqa_describe_lm").example(source(model, "sceneqa_describe_lm"), i)
    sc = scene_qa.scene(i, "train", 0, size=64)
    first, answer = ex.turns[0]
    described, question = first.rsplit("\n", 1)
    parts = described.split(" | ")
    assert len(parts) in (1, 2) and len(set(parts)) == 1  # once, or as two agreeing sources
    regions = parts[0].split("; ")
    assert len(regions) == len(sc.shapes)
    for colour, shape, cell in sc.shapes:  # each shape named with its colour and its cell
        assert f"{colour} {shape}, {PLACES[cell]}" in regions  # the world's shape names
    asked = {qa for kind in scene_qa.KINDS for qa in sc.questions[kind]}
    assert (question, answer) in asked and set(ex.turns[1:]) <= asked
    assert ex.input is None  # text only


def test_the_shuffled_control_asks_with_another_scenes_words(model):
    result = TASKS.get("sceneqa_aux").evaluate(model, samples=2, seed=1, shuffled=True)
    own = [scene_qa.scene(i, "test", 1, size=64) for i in range(2)]
    first = result["examples"][0]["prompt"]
    assert first.startswith(scene_words(model, own[1].image) + "\n")  # scene 0 gets 1's words
    assert scene_qa.other_scene(0, 200) != 0 and scene_qa.other_scene(199, 200) != 199


def test_the_mixer_control_hears_another_scenes_words():
    torch.manual_seed(0)
    moai = OneLLM.from_config(TINY, ["moai={layers: [1], sources: [components]}"]).eval()
    scenes = [scene_qa.scene(i, "test", 1, size=64) for i in range(4)]
    pixels = [moai.modalities["image"].pixels(s.image) for s in scenes]
    own = moai.moai.describe(moai, pixels)
    assert len(set(own)) == 4
    with moai_controls.others_words(moai, own, 1):
        said = moai.moai.describe(moai, pixels)
    assert said == [own[scene_qa.other_scene(i, 4)] for i in range(4)]
    assert moai.moai.describe(moai, pixels) == own  # the real sources are back
