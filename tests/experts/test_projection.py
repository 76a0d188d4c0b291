import pytest
import torch

from onellm.experts.projection.upm import UniversalProjection
from onellm.experts.projection.upm_experts import ExpertBlock, llama_ffn_hidden


def make(router=None, experts=3):
    p = UniversalProjection(
        width=32,
        llm_width=48,
        num_experts=experts,
        layers_per_expert=2,
        num_heads=4,
        num_queries=5,
        ffn_hidden=64,
        router_hidden=64,
        router=router or {"type": "soft"},
    )
    p.add_modality("image")
    return p.eval()


def test_ffn_rule_matches_llama_and_the_fixture():
    assert llama_ffn_hidden(64, 32) == 192  # fixture A
    assert llama_ffn_hidden(1024, 256) == 2816  # OneLLM-7B experts
    assert llama_ffn_hidden(4096, 256) == 11008  # LLaMA-7B


def test_output_is_the_weighted_sum_of_experts_query_rows():
    p = make()
    f = torch.randn(2, 11, 32)
    z, w = p.route(f, "image")
    assert z.shape == (2, 5 + 11, 32) and w.shape == (2, 5, 3)
    manual = sum(e(z)[:, :5] * w[..., k, None] for k, e in enumerate(p.experts))
    torch.testing.assert_close(p(f, "image"), p.out_proj["image"](manual))
    assert p(f, "image").shape == (2, 5, 48)


def test_expert_blocks_are_bidirectional():
    b = ExpertBlock(width=32, num_heads=4, ffn_hidden=64, eps=1e-5)
    x = torch.randn(1, 6, 32)
    y1 = b(x)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change only the last token
    assert not torch.allclose(b(x2)[:, 0], y1[:, 0])  # the first token sees it


def test_topk_one_uses_one_expert_per_token():
    p = make({"type": "topk", "k": 1})
    z, w = p.route(torch.randn(2, 9, 32), "image")
    assert ((w > 0).sum(-1) == 1).all()


def test_router_is_per_modality():
    p = make()
    p.add_modality("audio")
    f = torch.randn(1, 9, 32)
    assert not torch.allclose(p.route(f, "image")[1], p.route(f, "audio")[1])


def test_batched_pool_equals_each_expert_alone_with_gradients():
    """ExpertPool runs the K experts as one stacked computation: same outputs and grads."""
    p = make().train()
    z = torch.randn(2, 12, 32, requires_grad=True)
    wanted = [z] + [e.layers[0].gate_proj.weight for e in p.experts]
    wanted += [e.layers[-1].mlp_norm.weight for e in p.experts]
    pooled = p.experts(z, keep=5)  # (K, B, 5, W); last layer only for the kept rows
    looped = torch.stack([e(z)[:, :5] for e in p.experts])
    torch.testing.assert_close(pooled, looped, atol=1e-5, rtol=1e-5)
    g_pool = torch.autograd.grad(pooled.square().sum(), wanted)
    g_loop = torch.autograd.grad(looped.square().sum(), wanted)
    for a, b in zip(g_pool, g_loop, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_frozen_expert_gets_no_gradient_in_the_pool():
    p = make().train()
    p.experts[0].requires_grad_(False)
    p(torch.randn(2, 7, 32), "image").sum().backward()
    assert all(q.grad is None for q in p.experts[0].parameters())
    assert all(q.grad is not None for q in p.experts[1].parameters())


# ---------------------------------------------------------------- issue 22: MoE options
def test_a_query_dropped_from_every_expert_passes_through_the_residual():
    p = make({"type": "topk", "k": 1, "capacity_factor": 0.5}).train()
    f = torch.randn(3, 7, 32)
    z, r = p.routing(f, "image")
    assert r.passed.any() and not r.passed.all()  # 15 queries, 3 experts: capacity 3 each
    out = p(f, "image")
    # the same call again routes the same way (no noise): compare the passed rows
    kept = sum(e(z)[:, :5] * r.weights[..., k, None] for k, e in enumerate(p.experts))
    want = torch.where(r.passed[..., None], z[:, :5], kept)
    torch.testing.assert_close(out, p.out_proj["image"](want))
    torch.testing.assert_close(out[r.passed], p.out_proj["image"](z[:, :5])[r.passed])


def test_shared_experts_add_their_update_for_every_modality():
    p = make({"type": "topk", "k": 1, "shared": 2})
    p.add_modality("audio")
    assert len(p.shared) == 2 and p.routes["audio"] == [0, 1, 2]  # shared ones are not routed
    f = torch.randn(2, 9, 32)
    for m in ("image", "audio"):
        z, w = p.route(f, m)
        routed = sum(e(z)[:, :5] * w[..., k, None] for k, e in enumerate(p.experts))
        update = sum(s(z)[:, :5] - z[:, :5] for s in p.shared)
        torch.testing.assert_close(p(f, m), p.out_proj[m](routed + update), atol=1e-5, rtol=1e-5)


def test_upcycled_experts_give_the_same_output_as_the_originals_before_training():
    p = make()
    f = torch.randn(2, 9, 32)
    before = p(f, "image")
    new = p.upcycle([0, 1, 2])  # every expert copied once, noise 0: soft weights halve
    assert new == [3, 4, 5] and p.routes["image"] == [0, 1, 2, 3, 4, 5]
    z, _ = p.route(f, "image")
    outs = p.experts(z, keep=5)
    for j, s in zip(new, [0, 1, 2], strict=True):
        torch.testing.assert_close(outs[j], outs[s])
    torch.testing.assert_close(p(f, "image"), before, atol=1e-6, rtol=1e-5)


def test_one_expert_upcycled_into_top2_of_four_is_that_expert():
    """MoE-LLaVA's recipe: copies of one trained expert under a new top-2 router give that
    expert's output before training (the weights of any two copies sum to 1)."""
    p = make(experts=1)
    f = torch.randn(2, 9, 32)
    before = p(f, "image")
    p.upcycle([0, 0, 0])
    p.set_router({"type": "topk", "k": 2})
    assert p.routes["image"] == [0, 1, 2, 3]
    torch.testing.assert_close(p(f, "image"), before, atol=1e-5, rtol=1e-5)


def test_upcycling_noise_shakes_the_copies_and_not_the_originals():
    p = make()
    snapshot = [t.clone() for t in p.experts[0].parameters()]
    g = torch.Generator().manual_seed(0)
    (j,) = p.upcycle([0], noise=0.01, generator=g)
    for a, b, c in zip(snapshot, p.experts[0].parameters(), p.experts[j].parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c) and torch.allclose(a, c, rtol=0.1, atol=1e-6)


def test_set_router_keeps_the_mlp_so_topk_of_all_is_soft():
    p = make()
    f = torch.randn(2, 9, 32)
    before = p(f, "image")
    p.set_router({"type": "topk", "k": 3})
    assert p.router_spec == {"type": "topk", "k": 3}
    torch.testing.assert_close(p(f, "image"), before)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        p.set_router({"type": "topk", "k": 4})
    assert p.router_spec == {"type": "topk", "k": 3}  # a refused spec changes nothing


def test_the_recorder_sees_every_routing_with_the_query_rows():
    p = make()
    seen = []
    p.recorder = lambda m, x, r: seen.append((m, x, r))
    f = torch.randn(2, 9, 32)
    z, _ = p.route(f, "image")
    ((m, x, r),) = seen
    assert m == "image" and torch.equal(x, z[:, :5]) and r.weights.shape == (2, 5, 3)
