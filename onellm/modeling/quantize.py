"""Quantised LLM weights, for serving an LLM too large for its device: `quantization=`
`"8bit"` or `"4bit"` in `from_pretrained` / `from_config` / `onellm serve --load-in-8bit`.

- CUDA: bitsandbytes through transformers' `BitsAndBytesConfig`, applied while the LLM
  loads from its directory (a 7B LLM reaches the GPU already quantised): LLM.int8() for
  8bit, NF4 with double quantisation for 4bit (QLoRA's), computing in the model's dtype.
- CPU: torchao's int8 weight-only (`Int8WeightOnlyConfig`, one scale per output row) on the
  LLM's linear layers once the model is loaded (LoRA adapters included). torchao has no
  packed int4 CPU layout that saves memory here, so 4bit on the CPU is refused.

Only the LLM's linear layers are quantised: its embeddings and LM head stay in the model's
dtype (bitsandbytes keeps lm_head too), and so does everything outside the LLM (encoder,
UPM, output experts: small beside a 7B LLM). docs/serve.md has the measured error and memory.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import BitsAndBytesConfig

from onellm.errors import ConfigError

if TYPE_CHECKING:
    from onellm.model import OneLLM

QUANTIZATIONS = ("8bit", "4bit")


@dataclass(frozen=True)
class Quantization:
    """What quantises the LLM: `bits` (8 or 4) by `backend` (bitsandbytes | torchao)."""

    bits: int
    backend: str

    def __str__(self) -> str:
        return f"{self.bits}bit ({self.backend})"


def resolve(spec: str | None, device: torch.device) -> Quantization | None:
    """`None | "8bit" | "4bit"` on `device` -> the `Quantization` that runs there."""
    if spec is None or spec == "none":
        return None
    if spec not in QUANTIZATIONS:
        raise ConfigError(f"quantization: expected one of {', '.join(QUANTIZATIONS)}, got {spec!r}")
    bits = int(spec[0])
    if device.type == "cuda":
        if importlib_missing("bitsandbytes"):
            raise ConfigError(
                f"quantization: {spec} on CUDA needs the cuda-quant extra (bitsandbytes): "
                "pip install 'onellm[cuda-quant]'"
            )
        return Quantization(bits, "bitsandbytes")
    if bits == 4:
        raise ConfigError(
            "quantization: 4bit (NF4) runs on CUDA through bitsandbytes; on the CPU use 8bit "
            "(torchao int8 weight-only)"
        )
    if importlib_missing("torchao"):
        raise ConfigError(
            "quantization: 8bit on the CPU needs the quant extra (torchao): "
            "pip install 'onellm[quant]'"
        )
    return Quantization(8, "torchao")


def importlib_missing(name: str) -> bool:
    """Whether `name` cannot be imported (a `None` in sys.modules blocks it, as in tests)."""
    if name in sys.modules:
        return sys.modules[name] is None
    return importlib.util.find_spec(name) is None


def loading_config(q: Quantization | None, dtype: torch.dtype) -> Any:
    """transformers' quantisation config for `LlamaForCausalLM.from_pretrained` (bitsandbytes),
    or None when the LLM loads as it is (no quantisation, or torchao after loading)."""
    if q is None or q.backend != "bitsandbytes":
        return None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def after_loading(model: OneLLM, q: Quantization | None) -> None:
    """Quantise what loading did not (torchao on the CPU), in place; record `q` on the model."""
    model.quantization = q
    if q is None or q.backend != "torchao":
        return
    # torchao is the optional `quant` extra, imported only when a model is quantised
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def linear(module: nn.Module, fqn: str) -> bool:  # LoRA factors and the LM head stay
        return isinstance(module, nn.Linear) and "lora_" not in fqn and "lm_head" not in fqn

    # set_inductor_config=False: torchao would otherwise change torch._inductor's global config
    quantize_(model.llm, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=linear)


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by `module`'s parameters and buffers, quantised tensors counted by what
    they store (torchao's int8 data and scales, not the dtype they compute in)."""
    return sum(_bytes(t) for t in [*module.parameters(), *module.buffers()])


def _bytes(t: torch.Tensor) -> int:
    if hasattr(t, "__tensor_flatten__"):  # a tensor subclass (torchao): its inner tensors
        names, _ = t.__tensor_flatten__()
        return sum(_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()
