"""Output experts: special-token states routed by the emitted token to task heads."""

import torch

from onellm.experts.output.heads import GenHead, SegHead, token_states
from onellm.registry import OUTPUT_KINDS


def test_token_states_picks_each_special_token_in_reading_order():
    ids = torch.tensor([[5, 9, 7, 9], [9, 4, 4, 4]])
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    embeds = -hidden
    h, e, b = token_states(ids, hidden, embeds, 9)
    assert torch.equal(h, torch.stack([hidden[0, 1], hidden[0, 3], hidden[1, 0]]))
    assert torch.equal(e, -h) and b.tolist() == [0, 0, 1]
    h, _, _ = token_states(ids, hidden, embeds, 3)
    assert h.shape == (0, 3)  # no token: nothing reaches the decoder


def test_seg_head_mixes_its_experts_and_trains():
    head = SegHead(llm_width=16, out_dim=8, num_experts=3)
    states, embeds = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16)
    out, w = head(states, embeds)
    assert out.shape == (4, 8) and w.shape == (4, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    x = torch.cat([states, embeds], -1)
    manual = sum(w[:, k, None] * e(x) for k, e in enumerate(head.mix.experts))
    torch.testing.assert_close(out, manual)
    out.square().sum().backward()
    assert states.grad is not None
    assert all(p.grad is not None for p in head.parameters())


def test_gen_head_decodes_learned_queries_over_the_signal_states():
    head = GenHead(
        llm_width=16, out_dim=24, num_experts=2, width=32, num_queries=6, use_embedding=False
    )
    states = torch.randn(3, 4, 16)  # 3 groups of 4 <gen> tokens
    out, w = head(states)
    assert out.shape == (3, 6, 24) and w.shape == (3, 4, 2)
    other = states.clone()
    other[1] += 1.0
    out2, _ = head(other)
    assert torch.allclose(out2[0], out[0]) and not torch.allclose(out2[1], out[1])  # per group
    assert OUTPUT_KINDS.get("seg").head_class is SegHead
    assert OUTPUT_KINDS.get("gen").head_class is GenHead
