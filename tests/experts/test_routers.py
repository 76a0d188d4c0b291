import pytest
import torch

from onellm.experts.projection.routers import over_capacity, transplant
from onellm.registry import ROUTERS


def build(kind, **kw):
    return ROUTERS.build(kind, width=16, hidden=32, num_experts=4, **kw)


def test_soft_weights_sum_to_one_per_token_and_follow_onellm():
    r = build("soft")
    x = torch.randn(3, 5, 16)
    w = r(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    s = r.mlp(x).sigmoid()  # sigmoid then normalise, not softmax
    torch.testing.assert_close(w, s / s.sum(-1, keepdim=True))
    assert not torch.allclose(w, r.mlp(x).softmax(-1))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_has_exactly_k_nonzeros_and_sums_to_one(k):
    w = build("topk", k=k)(torch.randn(3, 5, 16))
    assert ((w != 0).sum(-1) == k).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))


def test_topk_with_k_equal_to_experts_is_soft():
    soft, top = build("soft"), build("topk", k=4)
    top.load_state_dict(soft.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(top(x), soft(x))


def test_topk_keeps_the_largest_soft_weights():
    soft, top = build("soft"), build("topk", k=1)
    top.load_state_dict(soft.state_dict())
    x = torch.randn(2, 7, 16)
    assert torch.equal(top(x).argmax(-1), soft(x).argmax(-1))


def test_constant_is_uniform_without_parameters():
    r = build("constant")
    assert sum(p.numel() for p in r.parameters()) == 0
    torch.testing.assert_close(r(torch.randn(2, 3, 16)), torch.full((2, 3, 4), 0.25))


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="k must be in 1..4"):
        build("topk", k=5)


# ---------------------------------------------------------------- sparse routing (issue 22)
def rigged(kind, logits, **kw):
    """A router whose logits are `logits` (B, Q, K) whatever its input: fc2 reads a one-hot."""
    b, q, k = logits.shape
    r = ROUTERS.build(kind, width=b * q, hidden=b * q, num_experts=k, **kw)
    with torch.no_grad():
        r.mlp.fc1.weight.copy_(torch.eye(b * q) * 10)  # GELU(10) = 10: the one-hot survives
        r.mlp.fc1.bias.zero_()
        r.mlp.fc2.weight.copy_(logits.reshape(b * q, k).T / 10)
        r.mlp.fc2.bias.zero_()
    return r, torch.eye(b * q).reshape(b, q, b * q)


def test_over_capacity_drops_exactly_the_late_assignments():
    # 2 examples x 3 queries, 2 experts; expert 0 chosen 5 times, expert 1 once
    chosen = torch.tensor([[[1, 0], [1, 1], [1, 0]], [[1, 0], [1, 0], [0, 0]]], dtype=torch.bool)
    # 6 assignments over 2 experts at factor 1: capacity 3 each; expert 0's 4th and 5th go
    dropped = over_capacity(chosen, 1.0)
    want = torch.zeros_like(chosen)
    want[1, 0, 0] = want[1, 1, 0] = True
    assert torch.equal(dropped, want)
    assert torch.equal(over_capacity(chosen, 2.0), torch.zeros_like(chosen))  # capacity 6
    assert over_capacity(chosen, 0.5).sum() == 5 - 2  # capacity ceil(1.5) = 2 for expert 0


def test_capacity_drops_count_renormalise_and_pass_through():
    # 3 tokens, all preferring expert 0 then 1 (top-1): capacity ceil(1 x 3 / 3) = 1
    logits = torch.tensor([[[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]])
    r, x = rigged("topk", logits, k=1, capacity_factor=1.0)
    out = r.train().route(x)
    assert out.chosen[..., 0].all() and int(out.dropped.sum()) == 2
    assert torch.equal(out.passed, torch.tensor([[False, True, True]]))
    assert torch.equal(out.weights[0, 1:], torch.zeros(2, 3))  # dropped queries: no weight
    torch.testing.assert_close(out.weights[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    # top-2, capacity 2 per expert: the third token (experts 0, 2) keeps expert 2 alone
    logits[0, 2] = torch.tensor([3.0, 0.0, 1.0])
    r2, _ = rigged("topk", logits, k=2, capacity_factor=1.0)
    out2 = r2.train().route(x)
    assert out2.dropped[0, 2].tolist() == [True, False, False] and not out2.passed.any()
    torch.testing.assert_close(out2.weights[0, 2], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out2.weights.sum(-1), torch.ones(1, 3))
    # inference drops nothing: a reply does not depend on the rest of its batch
    assert not r.eval().route(x).dropped.any()


def brute_top_p(probs, p):
    """The fewest experts, by trying every count n, whose largest n weights reach p."""
    k = probs.shape[-1]
    out = torch.zeros_like(probs, dtype=torch.bool)
    flat, hit = probs.reshape(-1, k), out.reshape(-1, k)
    for row, got in zip(flat, hit, strict=True):
        n = next(n for n in range(1, k + 1) if row.topk(n).values.sum() >= p - 1e-6)
        got[row.topk(n).indices] = True
    return out


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8, 1.0])
def test_top_p_picks_the_fewest_experts_reaching_p(p):
    r = build("top_p", p=p)
    x = torch.randn(4, 6, 16) * 3
    out = r.route(x)
    assert torch.equal(out.chosen, brute_top_p(out.probs, p))
    assert (out.probs * out.chosen).sum(-1).min() >= p - 1e-6
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4, 6))
    torch.testing.assert_close(
        out.weights, out.probs * out.chosen / (out.probs * out.chosen).sum(-1, keepdim=True)
    )


def test_top_p_is_dynamic_one_expert_for_a_confident_token_more_for_a_flat_one():
    logits = torch.tensor([[[6.0, -6.0, -6.0, -6.0], [0.0, 0.0, 0.0, 0.0]]])
    r, x = rigged("top_p", logits, p=0.6)
    assert r.route(x).chosen.sum(-1).tolist() == [[1, 3]]  # 0.25 each: three reach 0.6


def test_noise_only_while_training_and_a_recompute_with_its_draw_matches():
    r = build("topk", k=1, noise=5.0)
    x = torch.randn(2, 30, 16)
    r.eval()
    assert torch.equal(r.route(x).chosen, r.route(x).chosen)
    clean = r.route(x).chosen
    r.train()
    noisy = r.route(x)
    assert noisy.noise is not None and not torch.equal(noisy.chosen, clean)
    torch.testing.assert_close(noisy.probs, r.route(x).probs)  # the losses read noiseless probs
    again = r.route(x, noise=noisy.noise)
    assert torch.equal(again.chosen, noisy.chosen) and torch.equal(again.weights, noisy.weights)


def test_route_and_forward_agree_for_every_router():
    x = torch.randn(2, 5, 16)
    for kind in ROUTERS.names():
        r = build(kind).eval()
        assert torch.equal(r(x), r.route(x).weights), kind


def test_bad_router_options_are_refused():
    with pytest.raises(ValueError, match="p must be in"):
        build("top_p", p=0.0)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        build("topk", k=1, capacity_factor=0)
    with pytest.raises(TypeError):
        build("topk", k=1, capacity=1.0)  # a misspelt option is not swallowed


def test_transplant_copies_rows_and_upcycled_rows_match_their_source():
    old, new = build("soft"), ROUTERS.build("topk", width=16, hidden=32, num_experts=6, k=2)
    transplant(old, new, [0, 1, 2, 3, 1, 1])
    x = torch.randn(2, 5, 16)
    lo, ln = old.mlp(x), new.mlp(x)
    torch.testing.assert_close(ln[..., :4], lo)
    torch.testing.assert_close(ln[..., 4], lo[..., 1])
    transplant(old, new, [0, 1, 2, 3, 1, 1], noise=0.1)
    assert not torch.allclose(new.mlp(x)[..., 4], lo[..., 1])  # the copies are shaken
    torch.testing.assert_close(new.mlp(x)[..., 1], lo[..., 1])  # the original is not
