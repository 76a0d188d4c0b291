"""bench/real_scale.py's models: a CLIP ViT and a Llama with random weights written once as
local HF dirs (safetensors), and OneLLM's UPM, at the tests' size, 'small' or OneLLM-7B's."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from onellm import OneLLM

# CLIP, LLM and UPM shapes; the modalities the three-modality step reads; the weights' dtype
SIZES = {
    "tiny": {
        "clip": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, image_size=64, patch_size=8),
        "llm": dict(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=384, max_position_embeddings=512),
        "projection": dict(num_experts=3, layers_per_expert=1, num_heads=4, num_queries=8,
                           multiple_of=32),
        "audio": {"mel_bins": 36, "frames": 96},
        "dtype": "float32",
    },
    "small": {  # bench/configs/small.yaml
        "clip": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                     intermediate_size=2048, image_size=224, patch_size=14),
        "llm": dict(vocab_size=4096, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                    intermediate_size=1408, max_position_embeddings=1024),
        "projection": dict(num_experts=3, layers_per_expert=4, num_heads=8, num_queries=30,
                           multiple_of=32),
        "audio": {},
        "dtype": "float32",
    },
    "7b": {  # OneLLM-7B: CLIP ViT-L/14 at 224, UPM 3 x 8 blocks at 1024, Llama-2-7B
        "clip": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, image_size=224, patch_size=14),
        "llm": dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, intermediate_size=11008,
                    max_position_embeddings=2048),
        "projection": dict(num_experts=3, layers_per_expert=8, num_heads=16, num_queries=30,
                           multiple_of=256),
        "audio": {"mel_bins": 128, "frames": 1024},
        "dtype": "bfloat16",
    },
}  # fmt: skip


def hf_dirs(size: str, root: Path) -> tuple[Path, Path]:
    """ROOT/SIZE/clip and ROOT/SIZE/llama, written once (random weights, the size's dtype,
    2 GB safetensors shards), one model in memory at a time."""
    spec, out = SIZES[size], root / size
    dtype = getattr(torch, spec["dtype"])
    clip_dir, llm_dir = out / "clip", out / "llama"
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the dtype it is saved in: half the memory at 7b
    try:
        if not (clip_dir / "config.json").is_file():
            CLIPVisionModel(CLIPVisionConfig(**spec["clip"])).save_pretrained(clip_dir)
            gc.collect()
        if not (llm_dir / "config.json").is_file():
            cfg = LlamaConfig(
                **spec["llm"], bos_token_id=1, eos_token_id=2, pad_token_id=0,
                tie_word_embeddings=False,
            )  # fmt: skip
            LlamaForCausalLM(cfg).save_pretrained(llm_dir, max_shard_size="2GB")
            gc.collect()
    finally:
        torch.set_default_dtype(before)
    return clip_dir, llm_dir


def build(size: str, root: Path) -> tuple[OneLLM, Path]:
    """The size's model built from its HF dirs (image, video, audio), in training mode."""
    spec = SIZES[size]
    clip_dir, llm_dir = hf_dirs(size, root)
    config = {
        "encoder": {"path": str(clip_dir)},
        "llm": {"path": str(llm_dir)},
        "projection": {**spec["projection"], "router": {"type": "soft"}},
        "modalities": {"image": {}, "video": {"frames": 2}, "audio": spec["audio"]},
        "dtype": spec["dtype"],
    }
    return OneLLM.from_config(config).train(), root / size


def profile_ops(fn, model, rows: int = 10) -> str:
    """One call of `fn` under torch.profiler: the top `rows` operators by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    model.zero_grad(set_to_none=True)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
