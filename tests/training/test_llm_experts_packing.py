"""Packed micro-batches (onellm/data/packing.py) on a model with per-modality LoRA experts in
the LLM: each packed sample routes by its own modality runs, so the loss and the experts'
gradients are the padded batch's."""

import pytest
import torch

from onellm import OneLLM
from onellm.data.sources import Source
from onellm.registry import TASKS
from onellm.training.stage import SourceConfig
from onellm.training.task import Batching
from tests.modeling.test_llm_lora_experts import EXPERTS, trained
from tests.training.test_packing_tasks import step_of


@pytest.mark.parametrize("route", ["modality", "learned"])
def test_packed_samples_route_by_their_own_runs(route):
    torch.manual_seed(0)
    model = OneLLM.from_config("tiny", [EXPERTS.replace("}", f", route: {route}}}")])
    trained(model).train()
    task = TASKS.get("caption")
    # two modalities a sample: a packed row holds image, audio, image, audio runs, and each
    # sample's BOS must route to its own image run, not the previous sample's audio
    cfg = SourceConfig(task="caption", pool=16, modality=["image", "audio"])
    src = Source(model, "caption", cfg, seed=0)
    positions = list(range(6))
    examples = [src[p] for p in positions]

    def batches(pack_tokens):
        return task.collate(examples, Batching(model, cfg, src.modality, 0, positions, pack_tokens))

    padded = batches(None)
    packed = batches(2 * max(b["input_ids"].shape[1] for b in padded))
    assert all("position_ids" in b for b in packed) and len(packed[0]["input_ids"]) < 6
    aux = torch.nn.ModuleDict(task.aux(model))
    loss_a, grads_a = step_of(model, aux, task, padded)
    loss_b, grads_b = step_of(model, aux, task, packed)
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)), (loss_a, loss_b)
    experts = {n for n in grads_a if "lora_" in n}
    used = {n.split(".lora_")[1].split(".")[1] for n in experts}
    # by modality, only the samples' own experts run; learned gates weigh every expert
    assert used == ({"image", "audio"} if route == "modality" else {"text", *model.modalities})
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-5, msg=n)
