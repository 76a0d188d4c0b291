"""Packed micro-batches (onellm/data/packing.py) give every registered task the loss and the
trainable gradients of its padded batch, on the tiny model."""

from unittest.mock import ANY

import pytest
import torch

from onellm import OneLLM
from onellm.data.packing import resolve
from onellm.data.sources import Source
from onellm.errors import InputError
from onellm.registry import TASKS
from onellm.training.stage import SourceConfig
from onellm.training.task import Batching, Step

# (task, source settings): every registered task, each on the data it reads
SOURCES = {
    "caption": {"modality": ["image", "audio"]},  # two modalities a sample
    "instruct": {"modality": "image"},
    "lm": {"context_mix": 0.5},
    "clip": {"modality": "image"},
    "sam": {"modality": "image"},
    "t2i": {},
    "seg": {"modality": "image"},
    "gen": {},
    "sceneqa": {"modality": "image"},
    "sceneqa_lm": {"modality": "image"},
    "sceneqa_aux": {"modality": "image"},
    "sceneqa_describe_lm": {"modality": "image"},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = OneLLM.from_config("tiny")
    for out in m.outputs.values():  # the decoder losses reach the LLM too
        out.tune_llm = True
    return m.requires_grad_(True).train()  # the LLM's gradients too


def test_every_registered_task_is_covered():
    assert set(TASKS.names()) <= set(SOURCES)


def step_of(model, aux, task, batches):
    """The loss of a step's micro-batches and each trainable parameter's gradient."""
    items = torch.tensor(float(sum(task.items(b) for b in batches)))
    total = 0.0
    torch.manual_seed(1)  # the diffusion loss's noise and timesteps: the same draws
    for b in batches:
        loss, _ = task.loss(Step(model, aux, None, 1), b, items)
        loss.backward()
        total += float(loss.detach())
    params = [*model.named_parameters(), *aux.named_parameters()]
    grads = {n: p.grad.clone() for n, p in params if p.grad is not None}
    model.zero_grad(set_to_none=True)
    aux.zero_grad(set_to_none=True)
    return total, grads


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_packed_equals_padded_loss_and_gradients(model, name):
    task = TASKS.get(name)
    cfg = SourceConfig(task=name, pool=16, **SOURCES[name])
    src = Source(model, name, cfg, seed=0)
    positions = list(range(6))
    examples = [src[p] for p in positions]

    def batches(pack_tokens):
        b = Batching(model, cfg, src.modality, 0, positions, pack_tokens)
        return task.collate(examples, b)

    padded = batches(None)
    longest = max((b["input_ids"].shape[1] for b in padded if "input_ids" in b), default=1)
    packed = batches(2 * longest)  # several rows, of up to two samples or more
    if task.packs:
        assert all("position_ids" in b for b in packed)
        assert len(packed[0]["input_ids"]) < len(examples)
        assert sum(int(b["attention_mask"].sum()) for b in packed) == sum(
            int(b["attention_mask"].sum()) for b in padded
        )
    else:  # no LLM rows: nothing to pack
        assert not any("position_ids" in b for b in packed)
    aux = torch.nn.ModuleDict(task.aux(model))
    loss_a, grads_a = step_of(model, aux, task, padded)
    loss_b, grads_b = step_of(model, aux, task, packed)
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("compressor", ["perceiver", "regions"])
def test_auto_packs_and_a_moai_model_mixes_each_packed_sample_alone(compressor):
    torch.manual_seed(0)
    spec = f"moai={{layers: [1, 3], sources: [components], compressor: {compressor}}}"
    moai = OneLLM.from_config("tiny", [spec])
    assert resolve("auto", None, moai) == (512, ANY)  # the tiny LLM's context
    assert resolve(True, 96, moai)[0] == 96 and resolve(False, 96, moai)[0] is None
    with torch.no_grad():  # the mixer starts at exact zeros: make it add something
        for p in moai.moai.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    moai.requires_grad_(True).train()
    task = TASKS.get("sceneqa")  # questions whose aux text (the shapes' regions) matters
    cfg = SourceConfig(task="sceneqa", pool=8, modality="image")
    src = Source(moai, "q", cfg, seed=0)
    examples = [src[p] for p in range(5)]

    def batches(pack_tokens):
        return task.collate(examples, Batching(moai, cfg, "image", 0, list(range(5)), pack_tokens))

    padded = batches(None)
    packed = batches(2 * padded[0]["input_ids"].shape[1])
    assert len(packed[0]["input_ids"]) < 5 and len(packed[0]["aux"]) == 5
    aux = torch.nn.ModuleDict()
    loss_a, grads_a = step_of(moai, aux, task, padded)
    loss_b, grads_b = step_of(moai, aux, task, packed)
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)), (loss_a, loss_b)
    assert any(n.startswith("moai.mixers.") for n in grads_a)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-5, msg=n)
    with pytest.raises(InputError, match=r"^moai: expected one auxiliary text per packed sample"):
        b = packed[0]
        moai(b["input_ids"], position_ids=b["position_ids"], inputs=b["inputs"], aux=["x"])
