"""The language model: transformers' `LlamaForCausalLM`, from a local dir or random tiny sizes.

Attention: PyTorch SDPA, or flash-attention-2 where the `flash` extra is installed, the
model goes to CUDA and its weights are fp16/bf16 (`attn_implementation: auto`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from onellm.config import ChatConfig, LLMConfig
from onellm.errors import CheckpointError, ConfigError
from onellm.modeling.text_tokenizer import tiny_tokenizer


def attn_implementation(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """`auto` -> flash_attention_2 for a CUDA model with fp16/bf16 weights when flash-attn is
    importable (its kernels take nothing else), else sdpa. Anything else is kept as asked."""
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "llm.attn_implementation: flash_attention_2 needs the flash extra (flash-attn): "
            "pip install 'onellm[flash]'"
        )
    if requested != "auto":
        return requested
    half = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cuda" and half and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_llm(
    cfg: LLMConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    quantization_config=None,
) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` from `cfg.path` (a local HF dir) or random from `cfg`'s sizes,
    with the attention kernel chosen for the `device` it will run on; `quantization_config`
    (transformers', onellm/modeling/quantize.py) quantises a loaded one as it loads."""
    attn = attn_implementation(cfg.attn_implementation, device or torch.device("cpu"), dtype)
    if quantization_config is not None and cfg.path is None:
        raise ConfigError(
            "quantization: bitsandbytes quantises an LLM as it loads from its directory "
            "(llm.path), got a random LLM; save the model and load it with from_pretrained"
        )
    if cfg.path is not None:
        if not Path(cfg.path).is_dir():
            raise CheckpointError(f"llm: checkpoint directory not found: {cfg.path}")
        return LlamaForCausalLM.from_pretrained(
            cfg.path,
            local_files_only=True,
            dtype=dtype,
            attn_implementation=attn,
            device_map=device,  # straight onto the GPU: a 7B LLM never sits in CPU memory
            quantization_config=quantization_config,
        )
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).to(dtype)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def build_text_tokenizer(
    cfg: LLMConfig, chat: ChatConfig | None = None, captions: Iterable[str] = ()
) -> PreTrainedTokenizerBase | None:
    """The LLM's tokenizer from `cfg.tokenizer`, else from `cfg.path` if that dir holds one;
    for a random LLM (no path), the tiny BPE tokenizer trained on the shapes world's language
    (`captions`: those of the model's modalities and output tasks).

    None when a checkpoint dir has no tokenizer: the model still works on token ids.
    """
    if cfg.path is None and cfg.tokenizer is None:
        chat = chat or ChatConfig()
        templates = (chat.system, chat.user, chat.assistant, *chat.stop)
        return tiny_tokenizer(cfg.vocab_size, templates, captions)
    if cfg.tokenizer is not None:
        if not Path(cfg.tokenizer).is_dir():
            raise CheckpointError(f"llm: tokenizer directory not found: {cfg.tokenizer}")
        return AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
    if cfg.path is not None and any((Path(cfg.path) / f).is_file() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    return None


def base_llm(llm: nn.Module) -> nn.Module:
    """The LlamaForCausalLM inside `llm`: itself, or what peft's LoRA wraps."""
    return llm.get_base_model() if isinstance(llm, PeftModel) else llm


def has_lora(llm: nn.Module) -> bool:
    """Whether peft wraps `llm` (LoRA adapters added)."""
    return isinstance(llm, PeftModel)
