"""MoE losses (onellm/training/moe.py) and the expert-use figures and alarm
(onellm/inference/routing.py)."""

from __future__ import annotations

import math

import pytest
import torch

from onellm.experts.projection.upm import UniversalProjection
from onellm.inference.routing import ExpertUse, summarise, use_of
from onellm.modeling.projection import Routing
from onellm.registry import ROUTERS
from onellm.training.moe import Call, recording, step_losses, switch_balance


def projection(router: dict, experts: int = 4) -> UniversalProjection:
    p = UniversalProjection(
        width=16,
        llm_width=24,
        num_experts=experts,
        layers_per_expert=1,
        num_heads=2,
        num_queries=3,
        ffn_hidden=32,
        router_hidden=32,
        router=router,
    )
    p.add_modality("image")
    p.add_modality("audio")
    return p.train()


def calls_of(router, xs: list[torch.Tensor], experts: list[int], modality="image") -> list[Call]:
    return [Call(modality, router, x, router.route(x), experts) for x in xs]


def test_balance_on_a_hand_made_routing_matches_the_formula():
    # 4 tokens, 3 experts, top-1: expert 0 chosen 3 times, expert 2 once
    chosen = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    f = torch.tensor([3 / 4, 0, 1 / 4])
    p_mean = probs.mean(0)  # [0.5, 0.275, 0.225]
    want = 3 * float((f * p_mean).sum())  # 3 x (0.375 + 0.05625) = 1.29375
    assert switch_balance(chosen, probs).item() == pytest.approx(want) == pytest.approx(1.29375)
    even = torch.eye(3, dtype=torch.bool)
    assert switch_balance(even, torch.full((3, 3), 1 / 3)).item() == pytest.approx(1.0)
    # the same through step_losses (one call is one micro-batch), with the z-loss beside it
    logits = torch.randn(4, 3)
    r = Routing(probs, probs, logits, chosen, torch.zeros_like(chosen))

    class Fixed(torch.nn.Module):  # a router that gives back this routing
        def route(self, x, noise=None):
            return r

    x = torch.zeros(4, 1)
    for scope in ("micro_batch", "global"):
        loss, logged = step_losses(
            [Call("image", Fixed(), x, r, [0, 1, 2])],
            balance=0.5,
            z_loss=0.1,
            scope=scope,
            num_experts=3,
        )
        z = float(logits.logsumexp(-1).square().mean())
        assert logged["moe_balance"] == pytest.approx(want)
        assert logged["moe_z_loss"] == pytest.approx(z)
        assert float(loss) == pytest.approx(0.5 * want + 0.1 * z)


def test_a_z_loss_over_routers_without_logits_is_nothing_to_add():
    router = ROUTERS.build("constant", width=16, hidden=32, num_experts=4)
    calls = calls_of(router, [torch.randn(2, 3, 16)], [0, 1, 2, 3])
    assert step_losses(calls, balance=0.0, z_loss=0.1, scope="global", num_experts=4) == (None, {})


def grads(loss, params):
    return torch.autograd.grad(loss, params)


def test_global_scope_equals_the_loss_of_one_big_batch_gradients_too():
    router = ROUTERS.build("topk", width=16, hidden=32, num_experts=4, k=2)
    inputs = torch.randn(8, 3, 16, requires_grad=True)  # the router's input gets gradients too
    params = [*router.parameters(), inputs]
    pieces = list(inputs.split(2))  # 4 micro-batches of 2 examples
    opts = dict(balance=1.0, z_loss=0.01, num_experts=4)
    big, big_log = step_losses(
        calls_of(router, [inputs], [0, 1, 2, 3]), scope="micro_batch", **opts
    )
    glob, glob_log = step_losses(calls_of(router, pieces, [0, 1, 2, 3]), scope="global", **opts)
    micro, micro_log = step_losses(
        calls_of(router, pieces, [0, 1, 2, 3]), scope="micro_batch", **opts
    )
    assert glob_log == pytest.approx(big_log, rel=1e-6)
    torch.testing.assert_close(glob, big)
    for a, b in zip(grads(glob, params), grads(big, params), strict=True):
        torch.testing.assert_close(a, b)
    # not vacuous: per micro-batch the choices of each piece are balanced on their own
    assert micro_log["moe_balance"] != pytest.approx(big_log["moe_balance"], rel=1e-4)


def test_global_scope_pools_modalities_so_specialists_are_not_pushed():
    """Image on experts 0-1 and audio on 2-3 is an even load over the step: global balance
    is 1 and its gradient 0; per micro-batch each modality is pushed to use all four."""
    p = projection({"type": "topk", "k": 2})
    with torch.no_grad():
        for m, favour in (("image", [0, 1]), ("audio", [2, 3])):
            fc2 = p.routers[m].mlp.fc2
            fc2.weight.zero_()
            fc2.bias.fill_(-4.0)
            fc2.bias[favour] = 4.0
    f = torch.randn(2, 5, 16)
    with recording(p) as calls:
        p(f, "image")
        p(f, "audio")
    opts = dict(balance=1.0, z_loss=0.0, num_experts=4)
    glob, logged = step_losses(calls, scope="global", **opts)
    assert logged["moe_balance"] == pytest.approx(1.0, abs=1e-6)
    bias = [p.routers[m].mlp.fc2.bias for m in ("image", "audio")]
    assert all(g.abs().max() < 1e-6 for g in grads(glob, bias))
    micro, logged = step_losses(calls, scope="micro_batch", **opts)
    assert logged["moe_balance"] > 1.9  # each modality's load sits on half the experts
    assert all(g.abs().max() > 1e-4 for g in grads(micro, bias))


def _rank(rank: int, world: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    router = ROUTERS.build("topk", width=16, hidden=32, num_experts=4, k=1)
    inputs = torch.randn(8, 3, 16)
    mine = list(inputs.split(4)[rank].split(2))  # this rank's half, as 2 micro-batches

    def all_sum(t):
        dist.all_reduce(t)
        return t

    loss, logged = step_losses(
        calls_of(router, mine, [0, 1, 2, 3]),
        balance=1.0,
        z_loss=0.01,
        scope="global",
        num_experts=4,
        all_sum=all_sum,
        world=world,
    )
    loss.backward()
    for q in router.parameters():  # the recipe's sync_replicated_grads: the mean over ranks
        dist.all_reduce(q.grad)
        q.grad /= world
    if rank == 0:
        torch.save({"logged": logged, "grads": [q.grad for q in router.parameters()]}, out)
    dist.destroy_process_group()


def test_global_scope_over_two_processes_equals_one_process_with_their_batch(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "two.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "rdzv"), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    router = ROUTERS.build("topk", width=16, hidden=32, num_experts=4, k=1)
    inputs = torch.randn(8, 3, 16)
    loss, logged = step_losses(
        calls_of(router, [inputs], [0, 1, 2, 3]),
        balance=1.0,
        z_loss=0.01,
        scope="micro_batch",
        num_experts=4,
    )
    assert two["logged"] == pytest.approx(logged, rel=1e-6)
    for a, b in zip(two["grads"], grads(loss, list(router.parameters())), strict=True):
        torch.testing.assert_close(a, b)


def test_use_figures_from_a_hand_made_routing():
    w = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    probs = torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
    chosen = torch.tensor([[[True, False, False], [True, False, False]]])
    dropped = torch.tensor([[[False, False, False], [True, False, False]]])
    r = Routing(w, probs, None, chosen, dropped)
    got = summarise(use_of(r, [0, 2, 3], 4), 4)  # its three experts are 0, 2 and 3 of four
    assert got["load"] == [1.0, 0.0, 0.0, 0.0] and got["routed"] == [1.0, 0.0, 0.0, 0.0]
    h = (-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) + math.log(3)) / 2
    assert got["entropy"] == pytest.approx(h)
    assert (got["dropped"], got["passed"], got["tokens"]) == (1, 1, 2)


def alarm_run(router_spec: dict, rig: bool) -> list[dict]:
    """Ten steps of two modalities through a projection, reported every 2 steps."""
    p = projection(router_spec)
    if rig:  # every router all but ignores expert 3
        with torch.no_grad():
            for r in p.routers.values():
                r.mlp.fc2.bias[3] = -30.0
    use = ExpertUse(floor=0.1, patience=6)
    reports = []
    for step in range(10):
        rows = torch.zeros(2, 3 + 4 * 4)
        with recording(p) as calls, torch.no_grad():
            p(torch.randn(2, 5, 16), "image")
            p(torch.randn(2, 5, 16), "audio")
        for c in calls:
            rows[["audio", "image"].index(c.modality)] += use_of(c.routing, c.experts, 4)
        use.add(["audio", "image"], rows, 4)
        if step % 2 == 1:
            reports.append(use.report())
    return reports


@pytest.mark.parametrize("router", [{"type": "soft"}, {"type": "topk", "k": 2}])
def test_the_collapse_alarm_fires_on_a_rigged_router_and_not_on_a_balanced_one(router):
    rigged = alarm_run(router, rig=True)
    assert [("collapse" in r) for r in rigged] == [False, False, True, True, True]
    assert rigged[2]["collapse"]["experts"] == [3] and rigged[2]["collapse"]["steps"] == 6
    assert len(rigged[2]["warnings"]) == 1 and "expert 3" in rigged[2]["warnings"][0]
    assert rigged[3]["warnings"] == []  # warned once, still in the metrics while it lasts
    assert rigged[0]["expert_share"][3] < 0.001
    balanced = alarm_run(router, rig=False)
    assert not any("collapse" in r or r["warnings"] for r in balanced)
    assert min(balanced[-1]["expert_share"]) > 0.1
