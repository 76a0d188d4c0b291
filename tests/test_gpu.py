"""GPU checks, off by default (`pytest -m gpu`, or `make gpu-check` with the GPU bench):
bf16 training on CUDA, chat cached == uncached, save -> load -> same logits, FSDP2 over the
GPUs there are, flash-attention-2 against SDPA."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
STAGE1 = ROOT / "configs" / "stages" / "stage1_image.yaml"


def short(tmp_path, *extra):
    return load_stage(
        STAGE1,
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path}",
            "device=cuda",
            "batch_size=16",
            "log_every=1",
            "eval.samples=4",
            "data.image.pool=64",
            "schedule.warmup_steps=2",
            *extra,
        ],
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_stage_trains_on_the_gpu(tmp_path, precision):
    r = Recipe(
        short(tmp_path, "steps=40", "optimizer.lr=3e-3", f"precision={precision}"), quiet=True
    ).setup()
    assert r.device.type == "cuda" and r.model.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in r.root.parameters())
    assert all(
        t.device.type == "cuda"
        for b in r.micro_batches(0, "image")
        for t in b.values()
        if isinstance(t, torch.Tensor)
    )
    r.train()
    r.save()
    losses = [x["loss"] for x in read_metrics(tmp_path) if x["event"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.93 * sum(losses[:3]) / 3, losses
    if precision == "fp16":
        assert r.scaler.is_enabled() and r.scaler.get_scale() > 1


def test_chat_on_the_gpu_is_the_same_with_and_without_the_kv_cache():
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, device="cuda").eval()
    x = torch.rand(64, 64, 3).mul(255).byte().numpy()
    a = model.chat(
        x, modality="image", prompt="What is this?", max_new_tokens=12, stop_strings=None
    )
    b = model.chat(
        x,
        modality="image",
        prompt="What is this?",
        max_new_tokens=12,
        stop_strings=None,
        use_cache=False,
    )
    assert a.token_ids == b.token_ids and a.text == b.text


def test_save_and_load_on_the_gpu_give_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, device="cuda", dtype="bfloat16").eval()
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m", device="cuda").eval()
    assert back.device.type == "cuda" and back.dtype == torch.bfloat16
    ids = torch.tensor([[1, 40, 41, 42]], device="cuda")
    image = torch.randn(1, 3, 64, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(
            onellm_logits(model, ids, image, "image"),
            onellm_logits(back, ids, image, "image"),
            rtol=0,
            atol=0,
        )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2 needs 2 or more GPUs")
def test_fsdp2_over_every_gpu_gives_the_losses_of_one(tmp_path):
    n = torch.cuda.device_count()
    args = [
        f"init_from={TINY}",
        "steps=4",
        f"batch_size={2 * n}",
        "log_every=1",
        "device=cuda",
        "eval.modalities=[]",
        "data={image: {pool: 32}}",
        "trainable=[projection.*, tokenizers.*]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launch in (
        ("one", [sys.executable, "-m", "onellm.cli"]),
        (
            "all",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={n}",
                "-m",
                "onellm.cli",
            ],
        ),
    ):
        out = subprocess.run(
            [*launch, "train", str(STAGE1), f"output_dir={tmp_path / name}", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-4000:]
    one, every = (
        [r["loss"] for r in read_metrics(tmp_path / k) if r["event"] == "train"]
        for k in ("one", "all")
    )
    assert len(one) == len(every) == 4
    assert all(abs(a - b) <= 1e-3 for a, b in zip(one, every, strict=True)), (one, every)
    start = json.loads((tmp_path / "all" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["processes"] == n


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed"
)
def test_flash_attention_2_matches_sdpa():
    from onellm.modeling.llm import attn_implementation

    assert attn_implementation("auto", torch.device("cuda"), torch.bfloat16) == "flash_attention_2"
    logits = {}
    for attn in ("flash_attention_2", "sdpa"):
        torch.manual_seed(0)
        model = OneLLM.from_config(
            TINY, [f"llm.attn_implementation={attn}"], device="cuda", dtype="bfloat16"
        ).eval()
        assert model.llm.config._attn_implementation == attn
        ids = torch.tensor([[1, 40, 41, 42, 43, 44]], device="cuda")
        image = torch.randn(
            1,
            3,
            64,
            64,
            device="cuda",
            dtype=torch.bfloat16,
            generator=torch.Generator("cuda").manual_seed(0),
        )
        with torch.no_grad():
            logits[attn] = onellm_logits(model, ids, image, "image").float()
    torch.testing.assert_close(logits["flash_attention_2"], logits["sdpa"], atol=3e-2, rtol=3e-2)
