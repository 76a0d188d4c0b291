"""bench/real_scale.py's two steps compute the same thing: OneLLM's pipeline (captions padded
to 96, CLIP each step, its UPM order) and onellm's packed step on cached features give the
same loss and UPM gradients on the same samples, built from HF dirs as at 7B."""

import torch

from bench.real_scale import Workload, three_modalities
from bench.real_scale_model import build
from onellm.training.freezing import set_trainable


def test_the_pipeline_and_the_packed_step_agree_on_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    model, where = build("tiny", tmp_path)
    assert (where / "llama" / "config.json").is_file()  # random weights as local HF dirs
    set_trainable(model, ["projection.*"])
    work = Workload(model, 6)
    idx = [0, 1, 2, 3, 4, 5]
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(step):
        loss = step(idx)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), grads

    theirs, g_theirs = loss_and_grads(work.pipeline)
    ours, g_ours = loss_and_grads(work.onellm)
    assert work.packed(idx)["input_ids"].shape[0] == 1  # six captions, one row, no padding
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert sum(g is not None for g in g_ours) > 20  # the image path: queries, router, experts
    for a, b in zip(g_theirs, g_ours, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    work.audio = model.features(torch.randn(6, *model.modalities["audio"].input_shape()), "audio")
    loss = three_modalities(model, work, idx)
    assert torch.isfinite(loss) and loss.requires_grad
