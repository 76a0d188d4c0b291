"""A stage with the LLM's MoE layers (`llm_experts: {kind: moe_layers}`): the `moe:` losses
on their routers, their expert use per modality in metrics.jsonl and expert_load.png."""

from __future__ import annotations

import pytest
import torch

from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY

STAGE4 = ROOT / "configs" / "stages" / "stage4_instruct.yaml"
MOE = "{kind: moe_layers, layers: [1, 3], experts: 4, k: 2, capacity: 1.0, noise: 0.01}"


def stage(tmp_path, *extra):
    return load_stage(
        STAGE4,
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path / 'run'}",
            f"model_overrides=['llm_experts={MOE}']",
            "lora=null",
            "trainable=['llm_experts.*']",
            "steps=4",
            "batch_size=2",
            "grad_accum=2",
            "mix_sources=true",
            "log_every=2",
            "eval.modalities=[]",
            "data={image: {task: instruct, pool: 8}, audio: {task: instruct, pool: 8}}",
            *extra,
        ],
    )


def routers(t) -> dict[str, torch.Tensor]:
    return {
        n: q.detach().clone() for n, q in t.model.llm_experts.named_parameters() if ".router." in n
    }


def test_a_stage_logs_each_layers_expert_use_per_modality(tmp_path):
    cfg = stage(tmp_path, "moe={balance: 0.01, z_loss: 0.001, scope: global}")
    t = Recipe(cfg, quiet=True).setup()
    before = routers(t)
    t.train()
    t.save()  # the final model and the plots
    logs = [r for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    assert [r["step"] for r in logs] == [2, 4]
    for r in logs:
        assert set(r["llm_routing"]) == {"layer 1", "layer 3"}
        assert set(r["moe_balance_by_pool"]) >= {"layer 1", "layer 3"}
        for layer in r["llm_routing"].values():
            # a prompt with one modality is that modality's from its BOS on
            assert set(layer["routing"]) == {"image", "audio"}
            for use in layer["routing"].values():
                assert sum(use["load"]) == pytest.approx(1.0)
                assert sum(use["routed"]) == pytest.approx(2.0)
            assert sum(s for s in layer["expert_share"]) == pytest.approx(1.0)
    assert any(
        u["dropped"]
        for r in logs
        for lay in r["llm_routing"].values()
        for u in lay["routing"].values()
    )
    after = routers(t)
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every gate trained
    assert (tmp_path / "run" / "plots" / "expert_load.png").is_file()


def test_the_balance_loss_moves_the_llm_routers_and_not_the_task_loss(tmp_path):
    """Same seed, same data: the task loss is the same, the routers' step is not, and the
    experts' step is the same (the balance term reads the routers alone; no clipping, whose
    factor the balance term's gradient would change)."""
    after, loss, experts = {}, {}, {}
    for balance in (0.0, 1.0):
        t = Recipe(
            stage(tmp_path, "steps=1", "grad_clip=null", f"moe.balance={balance}"), quiet=True
        ).setup()
        stats = t.train_step(0)
        loss[balance] = stats["loss"]
        after[balance] = routers(t)
        experts[balance] = {
            n: q.detach().clone()
            for n, q in t.model.llm_experts.named_parameters()
            if ".experts." in n
        }
    assert loss[0.0] == loss[1.0]
    assert all(not torch.equal(after[0.0][n], after[1.0][n]) for n in after[0.0])
    assert all(torch.equal(experts[0.0][n], experts[1.0][n]) for n in experts[0.0])


def test_packed_rows_train_as_padded_ones(tmp_path):
    """Samples end to end (onellm/data/packing.py) route as they do one a row: padding is
    routed nowhere, so the same positions reach the experts, and the loss and the balance
    term are those of the padded batch."""
    got = {}
    for packing in ("true", "false"):
        cfg = stage(tmp_path / packing, "steps=1", f"packing={packing}", "moe={balance: 0.01}")
        stats = Recipe(cfg, quiet=True).setup().train_step(0)
        got[packing] = (stats["loss"], stats["moe_balance"])
    assert got["true"] == pytest.approx(got["false"], rel=1e-5)
