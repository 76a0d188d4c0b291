import torch

from experts.projection import ExpertBlock, UniversalProjection, llama_ffn_hidden


def make(router=None, experts=3):
    p = UniversalProjection(
        width=32, llm_width=48, num_experts=experts, layers_per_expert=2, num_heads=4,
        num_queries=5, ffn_hidden=64, router_hidden=64, router=router or {"type": "soft"},
    )  # fmt: skip
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
