"""MoE losses over several pools (onellm/training/moe.py): the projection's experts and
each of the LLM's MoE layers balanced on their own, and a layer's calls recorded once per
forward, also when activation checkpointing recomputes the layer in backward."""

from __future__ import annotations

import pytest
import torch

from onellm import OneLLM
from onellm.modeling import activation_checkpointing
from onellm.modeling.projection import Routing
from onellm.registry import ROUTERS
from onellm.training.distributed import Dist
from onellm.training.moe import Call, StepMoE, recording_layers, step_losses
from onellm.training.stage import CollapseConfig, MoEConfig
from tests.conftest import TINY


def calls(router, xs, pool: str) -> list[Call]:
    return [Call("image", router, x, router.route(x), [0, 1, 2, 3], pool) for x in xs]


@pytest.mark.parametrize("scope", ["micro_batch", "global"])
def test_pools_are_balanced_on_their_own_and_their_terms_summed(scope):
    a = ROUTERS.build("topk", width=8, hidden=16, num_experts=4, k=2)
    b = ROUTERS.build("topk", width=8, hidden=16, num_experts=4, k=1)
    xa, xb = list(torch.randn(4, 3, 8).split(2)), list(torch.randn(4, 5, 8).split(2))
    opts = dict(balance=1.0, z_loss=0.01, scope=scope)
    one_a, log_a = step_losses(calls(a, xa, "layer 1"), num_experts={"layer 1": 4}, **opts)
    one_b, log_b = step_losses(calls(b, xb, "layer 3"), num_experts={"layer 3": 4}, **opts)
    both, logged = step_losses(
        calls(a, xa, "layer 1") + calls(b, xb, "layer 3"),
        num_experts={"layer 1": 4, "layer 3": 4},
        **opts,
    )
    torch.testing.assert_close(both, one_a + one_b)
    assert logged["moe_balance"] == pytest.approx(log_a["moe_balance"] + log_b["moe_balance"])
    assert logged["moe_balance_by_pool"] == pytest.approx(
        {"layer 1": log_a["moe_balance"], "layer 3": log_b["moe_balance"]}
    )
    # not vacuous: pooling the two layers' choices as one pool gives another balance
    pooled = [
        Call("image", c.router, c.x, c.routing, c.experts)
        for c in calls(a, xa, "layer 1") + calls(b, xb, "layer 3")
    ]
    _, one_pool = step_losses(pooled, num_experts=4, **opts)
    assert one_pool["moe_balance"] != pytest.approx(logged["moe_balance"], rel=1e-3)


def test_a_checkpointed_layer_recomputes_as_its_forward_and_is_recorded_once():
    """The LLM's layers are recomputed in backward after the routing context has closed:
    the MoE layers route them as the forward did (per-modality gates: an image prompt's
    positions read image's gate; the gradients match), and record each call once."""
    m = OneLLM.from_config(
        TINY,
        ["llm_experts={kind: moe_layers, layers: [1, 3], noise: 0.5, router: per_modality}"],
    ).train()
    ids, _ = m.layout.widen(torch.randint(3, 400, (2, 7)), ["image"])
    x = torch.randn(2, *m.modalities["image"].input_shape())

    def grads() -> tuple[dict[str, torch.Tensor], list[Call]]:
        m.zero_grad(set_to_none=True)
        seen: list[Call] = []
        with recording_layers(m.llm_experts, seen):
            loss = m(ids, inputs={"image": x}, labels=ids.masked_fill(ids >= 512, -100)).loss
            loss.backward()  # recomputes each checkpointed layer, hooks and all
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}, seen

    plain, _ = grads()
    activation_checkpointing.enable(m)
    again, seen = grads()
    assert [c.pool for c in seen] == ["layer 1", "layer 3"]
    assert plain.keys() == again.keys() and any(".gates.image." in n for n in plain)
    assert not any(".gates.text." in n for n in plain)  # every position is the image run's
    for n, g in plain.items():
        torch.testing.assert_close(again[n], g, msg=n)


def test_an_llm_layers_starved_expert_raises_the_alarm_under_its_layers_name():
    """StepMoE over a kind whose layer 1 never routes to expert 3: its report has the
    layer's figures per modality and the collapse alarm, the warning naming the layer."""

    class Layers:  # what a moe_layers kind shows the stage (onellm/modeling/routed_layers.py)
        pools = {"layer 1": 4}
        names = ["text", "image", "audio"]
        recorder = None

    cfg = MoEConfig(collapse=CollapseConfig(floor=0.1, steps=2))
    layers = Layers()
    moe = StepMoE(cfg, torch.nn.Identity(), Dist(), layers)
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(6, 1)
    chosen = torch.tensor([[True, True, False, False]]).repeat(6, 1)
    routing = Routing(probs * chosen / 0.8, probs, None, chosen, torch.zeros_like(chosen))
    groups = torch.tensor([1, 1, 1, 2, 2, 0])  # image, image, image, audio, audio, text
    reports = []
    for _ in range(3):
        with moe.recording():
            layers.recorder("layer 1", torch.zeros(6, 2), routing, None, groups, layers.names)
        assert moe.finish() == (None, {})  # no balance asked: figures only
        reports.append(moe.report())
    use = reports[0]["llm_routing"]["layer 1"]
    assert use["routing"]["image"]["tokens"] == 3 and use["routing"]["text"]["tokens"] == 1
    assert use["routing"]["audio"]["load"] == pytest.approx([0.625, 0.375, 0.0, 0.0])
    assert "collapse" not in use and reports[0]["warnings"] == []
    alarm = reports[1]["llm_routing"]["layer 1"]["collapse"]
    assert alarm["experts"] == [2, 3] and alarm["steps"] == 2
    assert len(reports[1]["warnings"]) == 2
    assert all(w.startswith("LLM layer 1: expert ") for w in reports[1]["warnings"])
    assert "routing" not in reports[1]  # an Identity projection routes nothing
