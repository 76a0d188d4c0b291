import pytest
import torch

from experts.routers import ROUTERS


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
