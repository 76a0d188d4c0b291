"""The task contract, table-driven: every registered task (onellm/tasks/) through the same
suite, and a task from outside the package trained without editing the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onellm.errors import RegistryError
from onellm.registry import TASKS
from onellm.training.evaluate import evaluate
from onellm.training.recipe import Recipe
from onellm.training.stage import load_stage
from onellm.training.task import Batching, Step, Task, output_tasks, register
from onellm.training.text_tasks import TextTask
from tests.conftest import ROOT, TINY

SOURCES = {
    "lm": "{task: lm}",
    "clip": "{task: clip, modality: image}",
    "caption": "{task: caption, modality: image}",
    "instruct": "{task: instruct, modality: audio}",
    "sam": "{task: sam, modality: image}",
    "t2i": "{task: t2i}",
    "seg": "{task: seg, modality: image}",
    "gen": "{task: gen}",
    "sceneqa": "{task: sceneqa, modality: image}",
    "sceneqa_lm": "{task: sceneqa_lm, modality: image}",
    "sceneqa_aux": "{task: sceneqa_aux, modality: image}",
    "sceneqa_describe_lm": "{task: sceneqa_describe_lm, modality: image}",
}
EVERYTHING = "[projection.*, tokenizers.*, outputs.*, llm.*, encoder.*]"


def stage(tmp_path, data: str, *extra: str):
    return load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path}",
            "batch_size=4",
            "steps=2",
            "log_every=1",
            "eval.modalities=[]",
            f"data={data}",
            f"trainable={EVERYTHING}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    torch.manual_seed(0)
    data = "{" + ", ".join(f"{k}: {{{v[1:-1]}, pool: 8}}" for k, v in SOURCES.items()) + "}"
    return Recipe(stage(tmp_path_factory.mktemp("tasks"), data), quiet=True).setup()


def test_every_registered_task_is_in_the_suite():
    assert set(TASKS.names()) == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_task_contract(recipe, name):
    task, src = TASKS.get(name), recipe.sources[name]
    assert isinstance(task, Task) and task.name == name and src.task is task
    assert all(isinstance(m, str) for m in task.metrics)
    assert task.output is None or task.output in recipe.model.outputs.token_ids
    assert (src.modality is None) == (task.text_only and src.cfg.modality is None)
    # examples depend on the position alone
    a, b = src[3], src[3]
    assert a.caption == b.caption and a.turns == b.turns
    if not task.needs_input:
        assert a.input is None
    # collate -> micro-batches with a positive count of what the loss is a mean over
    positions = list(range(4))
    batches = task.collate(
        [src[p] for p in positions], Batching(recipe.model, src.cfg, src.modality, 0, positions)
    )
    assert batches and all(isinstance(x, dict) for x in batches)
    counts = [task.items(x) for x in batches]
    assert all(isinstance(c, int) and c > 0 for c in counts)
    # the loss: a finite scalar whose gradient reaches trained parameters, and which the
    # normaliser divides (a step's loss is its items' sum over the global count)
    items = torch.tensor(float(sum(counts)))
    step = Step(recipe.model, recipe.aux, src.modality, 1)
    recipe.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for x in recipe.micro_batches(0, name):
        loss, logs = task.loss(step, x, items)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(np.isfinite(v) for v in logs.values())
        loss.backward()
        total += float(loss)
        halved, _ = task.loss(step, x, 2 * items)
        assert float(halved) < float(loss)
    grads = [p.grad for p in recipe.params if p.grad is not None]
    assert (
        grads
        and all(torch.isfinite(g).all() for g in grads)
        and any(g.abs().sum() > 0 for g in grads)
    )
    recipe.optimizer.zero_grad(set_to_none=True)
    assert total > 0


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_task_held_out_metric(recipe, name):
    task, model = TASKS.get(name), recipe.model
    if task.captions:  # its modality's captions, as the stage's table reads them
        r = evaluate(model, recipe.sources[name].modality, samples=2, max_new_tokens=4)
    elif task.metrics:
        r = task.evaluate(model, samples=2, seed=0)
        assert r["task"] == name and r["n"] == 2 and r["examples"]
        assert name in output_tasks()
    else:
        assert name not in output_tasks()
        with pytest.raises(NotImplementedError, match="no held-out metric"):
            task.evaluate(model, samples=1, seed=0)
        return
    for metric in task.metrics:
        assert metric in r and 0 <= r[metric] <= (10 if metric == "cider" else 1), (metric, r)


def test_registration_validates():
    with pytest.raises(RegistryError, match="'caption' is already registered"):
        register(type("Again", (TextTask,), {"name": "caption"})())
    with pytest.raises(TypeError, match="expected a Task instance"):
        register(object())
    with pytest.raises(TypeError, match="names metrics but has no evaluate"):
        register(type("NoEval", (TextTask,), {"name": "no_eval", "metrics": ("x",)})())
    assert "no_eval" not in TASKS


class Shout(TextTask):
    """A task from outside the package: captions in capitals (a plug-in's whole file)."""

    name = "shout"

    def example(self, source, i):
        ex = source.scene(i)
        ex.caption = ex.caption.upper()
        return ex


def test_a_new_task_trains_without_editing_the_recipe(tmp_path):
    if "shout" not in TASKS:
        register(Shout())
    cfg = stage(tmp_path, "{image: {task: shout, pool: 4}}", "trainable=[projection.*]")
    r = Recipe(cfg, quiet=True).setup()
    assert r.sources["image"][0].caption.isupper()
    before = r.model.projection.queries["image"].detach().clone()
    r.train()
    assert not torch.equal(before, r.model.projection.queries["image"])
