"""Quantised LLM weights: torchao int8 weight-only on the CPU (logits within 5% of the
largest fp32 logit, the LLM's weights under 40% of their fp32 bytes), bitsandbytes 8-bit
and NF4 on CUDA (gpu-marked)."""

import re
import sys

import pytest
import torch

from onellm import OneLLM
from onellm.errors import CheckpointError, ConfigError
from onellm.modeling.quantize import resolve, weight_bytes
from tests.conftest import TINY

TOL = 0.05  # max |logit error| as a share of the largest |fp32 logit| (measured: 1.4%)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    model.add_lora(r=4)
    path = tmp_path_factory.mktemp("q") / "run"
    model.save_pretrained(path)
    return path


def logits(model, ids):
    with torch.no_grad():
        return model.llm(input_ids=ids).logits.float()


def test_8bit_on_the_cpu_keeps_logits_close_and_cuts_the_llms_memory(saved):
    ref = OneLLM.from_pretrained(saved).eval()
    q = OneLLM.from_pretrained(saved, quantization="8bit").eval()
    ids = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    a, b = logits(ref, ids), logits(q, ids)
    err = (a - b).abs().max() / a.abs().max()
    assert 0 < err <= TOL  # quantised (not equal), and close
    assert weight_bytes(q.llm) <= 0.4 * weight_bytes(ref.llm)
    base = q.llm.get_base_model()
    proj = base.model.layers[0].self_attn.q_proj  # LoRA-wrapped
    assert type(proj.base_layer.weight) is not torch.nn.Parameter  # a torchao int8 tensor
    assert type(proj.lora_A["default"].weight) is torch.nn.Parameter  # adapters stay as trained
    assert (
        base.lm_head.weight.dtype == torch.float32
        and type(base.lm_head.weight) is torch.nn.Parameter
    )
    reply = q.chat(prompt="What is it?", max_new_tokens=4)
    assert len(reply.token_ids) >= 1 and str(q.quantization) == "8bit (torchao)"


def test_from_config_takes_the_same_option_and_a_quantised_model_is_not_saved(tmp_path):
    q = OneLLM.from_config(TINY, quantization="8bit")
    assert type(q.llm.model.layers[0].self_attn.q_proj.weight) is not torch.nn.Parameter
    with pytest.raises(CheckpointError, match="quantised .* for inference"):
        q.save_pretrained(tmp_path / "x")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3bit", "quantization: expected one of 8bit, 4bit, got '3bit'"),
        ("4bit", "4bit \\(NF4\\) runs on CUDA through bitsandbytes; on the CPU use 8bit"),
    ],
)
def test_bad_quantization_options_are_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        OneLLM.from_config(TINY, quantization=spec)


@pytest.mark.parametrize(
    ("missing", "device", "extra"),
    [("torchao", "cpu", "onellm[quant]"), ("bitsandbytes", "cuda", "onellm[cuda-quant]")],
)
def test_a_missing_quantisation_library_names_its_extra(monkeypatch, missing, device, extra):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(
        ConfigError, match=rf"needs the .* extra \({missing}\): pip install '{re.escape(extra)}'$"
    ):
        resolve("8bit", torch.device(device))


@pytest.mark.gpu
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_bitsandbytes_on_cuda_through_transformers(saved, bits):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    ref = OneLLM.from_pretrained(saved, device="cuda", dtype="bfloat16").eval()
    q = OneLLM.from_pretrained(saved, device="cuda", dtype="bfloat16", quantization=bits).eval()
    kind = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
    base = q.llm.get_base_model()
    assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, kind)
    assert isinstance(base.model.layers[0].mlp.up_proj, kind)
    assert not isinstance(base.lm_head, kind)  # transformers keeps the LM head
    ids = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    a, b = logits(ref, ids), logits(q, ids)
    assert (a - b).abs().max() / a.abs().max() <= (0.05 if bits == "8bit" else 0.15)
    assert weight_bytes(q.llm) <= (0.75 if bits == "8bit" else 0.6) * weight_bytes(ref.llm)
    assert len(q.chat(prompt="What is it?", max_new_tokens=4).token_ids) >= 1
