"""MoE routing in a stage and in saved models: `moe:` losses, `upcycle:`, `mix_sources`,
expert-use metrics and plots, and save/load of upcycled, top_p and shared-expert models."""

from __future__ import annotations

import pytest
import torch

from onellm import OneLLM
from onellm.errors import ConfigError
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY, random_input

STAGE2 = ROOT / "configs" / "stages" / "stage2_video_audio_point.yaml"
DATA = "data={image: {pool: 16}, audio: {pool: 16}, point: {pool: 16}}"


def stage(tmp_path, *extra):
    return load_stage(
        STAGE2,
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path / 'run'}",
            "steps=4",
            "batch_size=2",
            "grad_accum=3",
            "mix_sources=true",
            "log_every=2",
            "eval.modalities=[]",
            DATA,
            "upcycle={experts: 4, router: {type: topk, k: 2, capacity_factor: 1.5}}",
            "init_modalities={}",
            *extra,
        ],
    )


def test_a_stage_with_moe_losses_trains_and_logs_expert_use(tmp_path):
    cfg = stage(tmp_path, "moe={balance: 0.01, z_loss: 0.001, scope: global}")
    t = Recipe(cfg, quiet=True).setup()
    p = t.model.projection
    assert p.num_experts == 4 and p.router_spec == {"type": "topk", "k": 2, "capacity_factor": 1.5}
    keys, batches = t.data[0]  # one optimiser step, each micro-batch its own source
    assert isinstance(keys, tuple) and len(keys) == len(batches) == 3 and len(set(keys)) > 1
    routers = {n: q.detach().clone() for n, q in p.routers.named_parameters()}
    t.train()
    final = t.save()
    logs = [r for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    assert [r["step"] for r in logs] == [2, 4] and all(r["source"] == "mixed" for r in logs)
    for r in logs:
        assert r["moe_balance"] >= 1.0 - 1e-5 and r["moe_z_loss"] > 0
        for m, use in r["routing"].items():
            assert m in {"image", "audio", "point"} and len(use["load"]) == 4
            assert sum(use["load"]) == pytest.approx(1.0) and sum(use["routed"]) == pytest.approx(
                2.0
            )
            assert 0 < use["entropy"] <= torch.log(torch.tensor(4.0)) + 1e-5
    assert any(r["routing"][m]["dropped"] for r in logs for m in r["routing"])  # capacity 1.5
    moved = {
        n.split(".")[0] for n, q in p.routers.named_parameters() if not torch.equal(q, routers[n])
    }
    assert moved == {"image", "audio", "point"}  # video's router is not in this stage's data
    assert {"expert_load.png", "router_entropy.png"} <= {
        f.name for f in (tmp_path / "run" / "plots").iterdir()
    }
    # the upcycled top-2 model loads back as it trained
    back = OneLLM.from_pretrained(final).eval()
    assert back.projection.num_experts == 4 and back.config.projection.router["type"] == "topk"
    x = random_input(back, "audio")
    t.model.eval()
    torch.testing.assert_close(back.encode(x, "audio"), t.model.encode(x, "audio"))


def test_the_balance_loss_changes_the_routers_step_and_nothing_before_it(tmp_path):
    """Same seed, same data: the task loss is the same, the routers' step is not."""
    after, loss = {}, {}
    for balance in (0.0, 1.0):
        t = Recipe(stage(tmp_path, "steps=1", f"moe.balance={balance}"), quiet=True).setup()
        loss[balance] = t.train_step(0)["loss"]
        after[balance] = {
            n: q.detach().clone() for n, q in t.model.projection.routers.named_parameters()
        }
    assert loss[0.0] == loss[1.0]
    assert any(not torch.equal(after[0.0][n], after[1.0][n]) for n in after[0.0])


def test_top_p_and_shared_expert_models_save_and_load(tmp_path):
    m = OneLLM.from_config(TINY, ["projection.router={type: top_p, p: 0.6, shared: 1}"]).eval()
    assert len(m.projection.shared) == 1
    m.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.config.projection.router == {"type": "top_p", "p": 0.6, "shared": 1}
    assert len(back.projection.shared) == 1
    x = random_input(m, "image")
    torch.testing.assert_close(back.encode(x, "image"), m.encode(x, "image"))
    report = back.routing_report("image", x)
    assert report["shared"] == 1 and len(report["load"]) == 3 and report["dropped"] == 0


def test_add_modality_upcycles_new_experts_from_a_named_expert(tmp_path):
    m = OneLLM.from_config(TINY).eval()
    x = random_input(m, "image")
    before = m.encode(x, "image")
    m.add_modality("thermal", {"type": "depth"}, new_experts=2, upcycle_from=1)
    p = m.projection
    assert p.routes["thermal"] == [0, 1, 2, 3, 4] and p.routes["image"] == [0, 1, 2]
    for j in (3, 4):
        for a, b in zip(p.experts[j].parameters(), p.experts[1].parameters(), strict=True):
            assert torch.equal(a, b)
    m.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.projection.routes == p.routes
    torch.testing.assert_close(back.encode(x, "image"), before)  # image kept its experts
    with pytest.raises(ConfigError, match="upcycle_from must be an expert in 0..4, got 7"):
        m.add_modality("sonar", {"type": "depth"}, new_experts=1, upcycle_from=7)
    assert "sonar" not in m.modalities and p.num_experts == 5  # refused before any change


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("moe.scope=batch", "moe.scope: expected micro_batch or global, got 'batch'"),
        ("moe.balanse=0.1", "unknown key 'moe.balanse'"),
        ("moe.balance=-1", "moe.balance: expected >= 0"),
        ("upcycle={experts: 2}", "upcycle.experts: expected at least the model's 3, got 2"),
        (
            "upcycle={experts: 4, router: {type: topk, k: 5}}",
            "upcycle.router: router topk: k must be in 1..4",
        ),
        (
            "upcycle={experts: 4, sources: [9]}",
            r"upcycle.sources: expected 1 experts in 0..2, got \[9\]",
        ),
    ],
)
def test_bad_moe_settings_are_refused_by_name(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Recipe(stage(tmp_path, override), quiet=True).setup()
