"""Precision inside a training step: the dtype autocast computes in, fp16's loss scaler
(kept in checkpoints, refused under FSDP), and activation checkpointing, which keeps less
for backward and gives the same gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onellm.errors import ConfigError
from onellm.modeling.devices import grad_scaler
from onellm.training.recipe import Recipe
from onellm.training.stage import load_stage
from onellm.training.task import Step
from tests.conftest import ROOT, TINY


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision_sets_the_dtype_computed_inside_the_step(tmp_path, precision):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path}",
            "batch_size=2",
            "steps=1",
            "eval.modalities=[]",
            "data.image.pool=4",
            f"precision={precision}",
        ],
    )
    r = Recipe(cfg, quiet=True).setup()
    seen = {}
    expert = r.model.projection.experts[0].layers[0].q_proj
    llm_layer = r.model.llm.model.layers[0].mlp.down_proj

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, out.dtype)  # returns None: the output is kept

        return hook

    hooks = [
        m.register_forward_hook(record(n)) for n, m in (("expert", expert), ("llm", llm_layer))
    ]
    stats = r.train_step(0)
    for h in hooks:
        h.remove()
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == {"expert": want, "llm": want}
    assert np.isfinite(stats["loss"])
    assert all(p.dtype == torch.float32 for p in r.params)  # autocast: the weights stay fp32
    assert r.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":  # the scaler unscaled before clipping: a true-size norm
        assert 0 < stats["grad_norm"] < 1e3 and r.scaler.get_scale() > 1


def saved_bytes_and_grads(r: Recipe, key: str) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes autograd keeps for backward over one micro-batch, and the gradients."""
    (batch,) = r.micro_batches(0, key)
    task = r.sources[key].task
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    items = torch.tensor(float(task.items(batch)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = task.loss(Step(r.model, r.aux, r.sources[key].modality, 1), batch, items)
    loss.backward()
    return sum(saved), {
        n: p.grad.clone() for n, p in r.root.named_parameters() if p.grad is not None
    }


def test_activation_checkpointing_keeps_less_and_gives_the_same_gradients(tmp_path):
    runs = {}
    for on in (False, True):
        cfg = load_stage(
            ROOT / "configs" / "stages" / "stage1_image.yaml",
            [
                f"init_from={TINY}",
                f"output_dir={tmp_path / str(on)}",
                "batch_size=4",
                "data.image.pool=4",
                "trainable=[projection.*, llm.*, encoder.*]",
                "model_overrides=[projection.layers_per_expert=2]",
                f"activation_checkpointing={on}",
            ],
        )
        runs[on] = saved_bytes_and_grads(Recipe(cfg, quiet=True).setup(), "image")
    (plain, g0), (checkpointed, g1) = runs[False], runs[True]
    assert checkpointed < 0.5 * plain, (plain, checkpointed)
    assert g0.keys() == g1.keys() and any(n.startswith("model.llm.") for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    # names do not change: trainable globs and checkpoints read the same
    assert any(".experts.0.layers.1.q_proj.weight" in n for n in g1)


def test_fp16_scales_the_loss_in_one_process_and_is_refused_under_fsdp():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "fp16", 1).is_enabled()
    assert (
        not grad_scaler(cpu, "bf16", 2).is_enabled()
        and not grad_scaler(cpu, "fp32", 1).is_enabled()
    )
    with pytest.raises(ConfigError, match="precision: fp16 runs in one process.*got 2 processes"):
        grad_scaler(cpu, "fp16", 2)


def test_an_fp16_checkpoint_keeps_the_loss_scale(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path}",
            "batch_size=2",
            "steps=4",
            "checkpoint_every=2",
            "eval.modalities=[]",
            "data.image.pool=4",
            "precision=fp16",
        ],
    )
    r = Recipe(cfg, quiet=True).setup()
    for s in range(2):
        r.train_step(s)
    r.scaler.update(1024.0)  # a scale no fresh scaler starts at (65536)
    r.step = 2
    r.files.checkpoint(r.state, 2)
    resumed = Recipe(cfg, resume=True, quiet=True).setup()
    assert resumed.step == 2 and resumed.scaler.get_scale() == r.scaler.get_scale() == 1024.0
