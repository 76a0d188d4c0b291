"""Device and dtype placement, proven on the CPU: a model built in float64 or bf16 gets
every batch, every module input (decoders included) and every module output in its own
dtype and on its own device; CUDA asked for where there is none is a ConfigError naming
`device`; precision changes the dtype computed inside a step."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from onellm import OneLLM
from onellm.errors import ConfigError
from onellm.modeling.devices import resolve_device
from onellm.training.recipe import Recipe
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY

ALL_TASKS = (
    "{text: {task: lm, pool: 4}, clip: {task: clip, modality: image, pool: 4}, "
    "image: {task: caption, pool: 4}, audio: {task: instruct, pool: 4}, "
    "sam: {task: sam, modality: image, pool: 4}, t2i: {task: t2i, pool: 4}, "
    "seg: {task: seg, modality: image, pool: 4}, gen: {task: gen, pool: 4}}"
)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def tensors(x):
    """Every tensor inside a (nested) value, HF ModelOutputs included."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from tensors(v)


class Placement:
    """Forward hooks on every submodule that record any floating tensor going in or out
    in another dtype, or any tensor on another device, than the model's."""

    # by their libraries' design, float32 whatever the model: segment-anything's prompt
    # encoder casts point coordinates to float32 (experts/decoders/sam.py keeps its Fourier
    # table in float32 and casts what it gives); diffusers' `Timesteps` "always returns f32"
    # and the UNet casts it to its own dtype on the next line
    EXEMPT = ("prompt_encoder", "unet.time_proj")

    def __init__(self, root: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.wrong, self.calls = device, dtype, [], 0
        self.handles = []
        for name, m in root.named_modules():
            if any(e in name for e in self.EXEMPT):
                continue
            self.handles.append(
                m.register_forward_pre_hook(
                    lambda mod, args, kwargs, name=name: self.check(name, "in", (args, kwargs)),
                    with_kwargs=True,
                )
            )
            self.handles.append(
                m.register_forward_hook(
                    lambda mod, args, out, name=name: self.check(name, "out", out)
                )
            )

    def check(self, name: str, where: str, value) -> None:
        self.calls += 1
        for t in tensors(value):
            activation = t.is_floating_point() and t.dim() > 0  # not a 0-d count (num_items)
            if t.device != self.device or (activation and t.dtype != self.dtype):
                self.wrong.append(f"{name} {where}: {t.dtype} {t.device} {tuple(t.shape)}")

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def every_task_recipe(tmp_path, dtype: str) -> Recipe:
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            f"init_from={TINY}",
            f"model_overrides=[dtype={dtype}]",
            f"output_dir={tmp_path}",
            "device=cpu",
            "batch_size=2",
            "steps=1",
            "eval.modalities=[]",
            f"data={ALL_TASKS}",
            "trainable=[projection.*, outputs.*]",
        ],
    )
    return Recipe(cfg, quiet=True).setup()


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_every_task_step_runs_in_the_models_dtype_and_device(tmp_path, dtype):
    r = every_task_recipe(tmp_path, dtype)
    want = getattr(torch, dtype)
    assert r.model.dtype == want and r.device == torch.device("cpu")
    assert all(p.dtype == want for p in r.root.parameters())  # the stage's aux modules too
    hooks = Placement(r.root, r.device, want)
    try:
        for step, key in enumerate(r.cfg.data):
            for batch in r.micro_batches(step, key):
                for t in tensors(batch):
                    assert t.device == r.device, (key, t.dtype)
                    assert not t.is_floating_point() or t.dtype == want, (key, t.dtype)
            stats = r.train_step(step, (key, r.data.batches(step, key)))
            assert np.isfinite(stats["loss"]), (key, stats)
    finally:
        hooks.remove()
    assert hooks.calls > 1000  # the hooks saw the encoder, UPM, LLM, SAM and the UNet
    assert not hooks.wrong, hooks.wrong[:10]


def test_chat_with_masks_and_images_stays_in_the_models_dtype():
    from tests.inference.test_outputs import forced

    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, dtype=torch.float64, device="cpu").eval()
    hooks = Placement(model, torch.device("cpu"), torch.float64)
    try:
        image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        seg = model.chat(
            image,
            modality="image",
            prompt="segment it",
            stop_strings=None,
            **forced(model, "seg", 1),
        )
        gen = model.chat(None, prompt="draw it", stop_strings=None, **forced(model, "gen", 4))
    finally:
        hooks.remove()
    assert seg.masks and gen.images  # the decoders ran
    assert not hooks.wrong, hooks.wrong[:10]


def test_from_config_and_from_pretrained_take_device_and_dtype(tmp_path):
    model = OneLLM.from_config(TINY, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.config.dtype == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m", dtype=torch.float64, device=torch.device("cpu"))
    assert {p.dtype for p in back.parameters()} == {torch.float64}
    assert OneLLM.from_pretrained(tmp_path / "m").dtype == torch.bfloat16  # as saved
    with pytest.raises(ConfigError, match="config: dtype: expected one of"):
        OneLLM.from_config(TINY, dtype="float8")


@no_cuda
def test_cuda_where_there_is_none_is_a_config_error_naming_device(tmp_path):
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=r"^device: expected a CUDA GPU .*, got none"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match=r"^device: expected a CUDA GPU"):
        OneLLM.from_config(TINY, device="cuda")
    with pytest.raises(ConfigError, match=r"^device: expected a CUDA GPU"):
        load_stage(ROOT / "configs" / "stages" / "stage1_image.yaml", ["device=cuda"])
    with pytest.raises(
        ConfigError, match=r"^device: expected auto, cpu, cuda or cuda:N, got 'gpu'"
    ):
        resolve_device("gpu")
    assert resolve_device("auto") == torch.device("cpu")
    out = subprocess.run(
        [sys.executable, "-m", "onellm.cli", "chat", str(TINY), "--device", "cuda", "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "onellm: error: device: expected a CUDA GPU" in out.stderr


def test_torchrun_takes_the_local_rank_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("auto", local_rank=5) == torch.device("cuda", 5)
    assert resolve_device("cpu", local_rank=5) == torch.device("cpu")
    with pytest.raises(ConfigError, match="under torchrun each process takes cuda:LOCAL_RANK"):
        resolve_device("cuda:1", local_rank=3)
    with pytest.raises(ConfigError, match=r"device: expected one of cuda:0..cuda:7, got 'cuda:8'"):
        resolve_device("cuda:8")


def test_auto_attention_picks_flash_only_for_half_precision_cuda(monkeypatch):
    import importlib.util

    from onellm.modeling.llm import attn_implementation

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    real = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda n, real=real, installed=installed: (
                object() if n == "flash_attn" and installed else real(n)
            ),
        )
        want = "flash_attention_2" if installed else "sdpa"
        assert attn_implementation("auto", cuda, torch.bfloat16) == want
        assert attn_implementation("auto", cuda, torch.float16) == want
        assert attn_implementation("auto", cuda, torch.float32) == "sdpa"
        assert attn_implementation("auto", cpu, torch.bfloat16) == "sdpa"
        assert attn_implementation("eager", cuda, torch.bfloat16) == "eager"
