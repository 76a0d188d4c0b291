"""The benchmark's baseline must compute what the library computes, or its timings mean nothing."""

import torch

from bench.onellm_layout import OneLLMLayout
from bench.step import count_flops, run_step, step_inputs
from onellm import OneLLM
from onellm.training.freezing import set_trainable
from tests.conftest import TINY


def test_onellm_order_gives_the_same_encoding_and_gradients():
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    set_trainable(model, ["projection.*"])
    image, _ = step_inputs(model, 2, 6)
    ours = model.encode(image, "image")
    (g_ours,) = torch.autograd.grad(ours.square().sum(), model.projection.queries["image"])
    with OneLLMLayout(model.projection):
        theirs = model.encode(image, "image")
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), model.projection.queries["image"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(model.projection)  # the layout is undone on exit


def test_the_onellm_order_counts_more_flops_than_ours():
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    set_trainable(model, ["projection.*"])
    image, ids = step_inputs(model, 2, 6)
    ours = count_flops(lambda: run_step(model, image, ids, "fp32", backward=True))
    with OneLLMLayout(model.projection):
        theirs = count_flops(lambda: run_step(model, image, ids, "fp32", backward=True))
    assert 0 < ours < theirs  # the last layer's non-query rows and the router rows are skipped
    assert all(p.grad is None for p in model.parameters())  # run_step clears gradients


def test_the_official_step_gives_our_loss_and_gradients():
    from bench.step import step_loss

    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    set_trainable(model, ["projection.*"])
    image, ids = step_inputs(model, 2, 6)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = step_loss(model, image, ids)
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)  # other modalities' parts
    with OneLLMLayout(model.projection):
        theirs = step_loss(model, image, ids)
        g_theirs = torch.autograd.grad(theirs, params, allow_unused=True)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert [g is None for g in g_theirs] == [g is None for g in g_ours]
    assert sum(g is not None for g in g_ours) > 20  # the image path: queries, router, experts
    for a, b in zip(g_theirs, g_ours, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
