"""The language model: transformers' `LlamaForCausalLM`, from a local dir or random tiny sizes.

Attention: PyTorch SDPA, or flash-attention-2 where the `flash` extra is installed and
CUDA is present (`attn_implementation: auto`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from onellm.config import ChatConfig, LLMConfig
from onellm.errors import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def attn_implementation(requested: str) -> str:
    """`auto` -> flash_attention_2 when flash-attn is importable and CUDA is there, else sdpa."""
    if requested != "auto":
        return requested
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"


def build_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` from `cfg.path` (a local HF dir) or random from `cfg`'s sizes."""
    attn = attn_implementation(cfg.attn_implementation)
    if cfg.path is not None:
        if not Path(cfg.path).is_dir():
            raise CheckpointError(f"llm: checkpoint directory not found: {cfg.path}")
        return LlamaForCausalLM.from_pretrained(
            cfg.path, local_files_only=True, dtype=dtype, attn_implementation=attn
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
    cfg: LLMConfig, chat: ChatConfig | None = None
) -> PreTrainedTokenizerBase | None:
    """The LLM's tokenizer from `cfg.tokenizer`, else from `cfg.path` if that dir holds one;
    for a random LLM (no path), the tiny BPE tokenizer trained on the shapes world's language.

    None when a checkpoint dir has no tokenizer: the model still works on token ids.
    """
    if cfg.path is None and cfg.tokenizer is None:
        from onellm.text_tokenizer import tiny_tokenizer

        chat = chat or ChatConfig()
        return tiny_tokenizer(cfg.vocab_size, (chat.system, chat.user, chat.assistant, *chat.stop))
    if cfg.tokenizer is not None:
        if not Path(cfg.tokenizer).is_dir():
            raise CheckpointError(f"llm: tokenizer directory not found: {cfg.tokenizer}")
        return AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
    if cfg.path is not None and any((Path(cfg.path) / f).is_file() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
    return None
