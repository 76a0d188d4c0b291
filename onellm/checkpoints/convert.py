"""Load official OneLLM checkpoints (csuhan/OneLLM, `llma.`-prefixed keys) into `OneLLM`.

Every size is read from tensor shapes; only what shapes cannot tell is an argument (head
counts, the audio stride). Keys map onto transformers' CLIP and Llama (official_keys.py).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open

# re-exported: conformance.py and users import them from here
from onellm.checkpoints.official_keys import MODALITY_NAMES, map_keys, permute_rotary  # noqa: F401
from onellm.config import EncoderConfig, LLMConfig, ModelConfig, ProjectionConfig
from onellm.errors import CheckpointError
from onellm.model import OneLLM


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.safetensors` or `.pth` checkpoint -> tensors, never unpickling arbitrary objects.

    Memory-mapped, not read: a tensor's pages come from the file as they are used, so a
    15 GB checkpoint converts without a second copy of it in memory."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        with safe_open(p, framework="pt") as f:  # safetensors maps the file itself
            sd: Any = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=_zip_format(p))
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for bad files
            raise CheckpointError(f"{p}: not a weights-only torch checkpoint: {e}") from e
    if isinstance(sd, Mapping) and isinstance(sd.get("model"), Mapping):
        sd = sd["model"]  # training checkpoints wrap the state dict
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: expected a mapping of tensors")
    return {k.removeprefix("llma."): v for k, v in sd.items()}


def _zip_format(path: Path) -> bool:
    """Whether torch.load can map `path`: torch.save's zip format (since torch 1.6), not the
    legacy one, which is read whole."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_config(
    sd: Mapping[str, torch.Tensor],
    *,
    llm_heads: int,
    encoder_heads: int,
    expert_heads: int = 16,
    audio_stride: int = 10,
    audio_mel_bins: int = 128,
    modality_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> ModelConfig:
    """A `ModelConfig` whose shapes match state dict `sd` (keys without `llma.`)."""
    try:
        vocab, dim = sd["tok_embeddings.weight"].shape
        width, _, patch, _ = sd["clip.visual.conv1.weight"].shape
        grid = math.isqrt(sd["clip.visual.positional_embedding"].shape[0] - 1)
        _, queries, expert_width = sd["resample_tokens.image"].shape
    except KeyError as e:
        raise CheckpointError(f"not a OneLLM checkpoint: missing {e.args[0]!r}") from e
    encoder = EncoderConfig(
        hidden_size=width,
        num_hidden_layers=_count(sd, r"clip\.visual\.transformer\.resblocks\.(\d+)\."),
        num_attention_heads=encoder_heads,
        intermediate_size=sd["clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        image_size=grid * patch,
        patch_size=patch,
    )
    llm = LLMConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=_count(sd, r"layers\.(\d+)\."),
        num_attention_heads=llm_heads,
        intermediate_size=sd["layers.0.feed_forward.w1.weight"].shape[0],
        max_position_embeddings=2048,
    )
    projection = ProjectionConfig(
        num_experts=_count(sd, r"resample_layers\.(\d+)\."),
        layers_per_expert=_count(sd, r"resample_layers\.0\.(\d+)\."),
        num_heads=expert_heads,
        num_queries=queries,
        ffn_hidden_size=sd["resample_layers.0.0.feed_forward.w1.weight"].shape[0],
        router_hidden_size=sd["routers.image.fc1.weight"].shape[0],
    )
    mods: dict[str, dict[str, Any]] = {}
    for ref in sorted({k.split(".")[1] for k in sd if k.startswith("resample_tokens.")}):
        mods[MODALITY_NAMES.get(ref, ref)] = _modality_kwargs(
            sd, ref, width, audio_stride=audio_stride, audio_mel_bins=audio_mel_bins
        )
    for name, extra in (modality_kwargs or {}).items():
        mods.setdefault(MODALITY_NAMES.get(name, name), {}).update(extra)
    if expert_width != width:
        raise CheckpointError(f"expert width {expert_width} differs from CLIP width {width}")
    return ModelConfig(encoder=encoder, llm=llm, projection=projection, modalities=mods)


def _modality_kwargs(sd, ref: str, width: int, *, audio_stride: int, audio_mel_bins: int) -> dict:
    tokens = lambda: sd[f"positional_embedding.{ref}"].shape[0] - 1  # noqa: E731
    if ref == "video":
        return {"frames": 15, "motion": False}  # OneLLM has no motion tokens
    if ref == "audio":
        kernel = sd["conv1.audio.weight"].shape[-1]
        grid_mel = (audio_mel_bins - kernel) // audio_stride + 1
        if tokens() % grid_mel:
            raise CheckpointError(
                f"audio: {tokens()} tokens do not fit {audio_mel_bins} mel bins at stride "
                f"{audio_stride}; pass audio_mel_bins / audio_stride"
            )
        grid_t = tokens() // grid_mel
        # the largest multiple of 8 frames that gives `grid_t` columns (OneLLM: 1024 -> 101)
        frames = ((grid_t - 1) * audio_stride + kernel + audio_stride - 1) // 8 * 8
        return {
            "mel_bins": audio_mel_bins,
            "frames": frames,
            "kernel": kernel,
            "stride": audio_stride,
        }
    if ref == "imu":
        kernel = sd["conv1.imu.weight"].shape[-1]
        return {"length": tokens() + kernel - 1, "kernel": kernel}
    if ref == "fmri":
        out, voxels = sd["conv1.fmri.weight"].shape
        return {"voxels": voxels, "tokens": out // width}
    if ref == "point":
        return {"points": 8192, "groups": tokens(), "neighbours": 32, "coords": "rgb"}
    return {}


def from_onellm(
    path: str | os.PathLike,
    *,
    llm_heads: int,
    encoder_heads: int,
    expert_heads: int = 16,
    dtype: str = "float32",
    tokenizer: str | None = None,
    **infer_kwargs: Any,
):
    """Load an official OneLLM checkpoint (.pth or .safetensors) as a `OneLLM` model.

    Sizes come from tensor shapes; pass the head counts (not recoverable from shapes). The
    load is strict: a key that maps nowhere, or a parameter left unfilled, raises.
    """
    sd = load_state_dict(path)
    cfg = infer_config(
        sd,
        llm_heads=llm_heads,
        encoder_heads=encoder_heads,
        expert_heads=expert_heads,
        **infer_kwargs,
    )
    cfg.dtype = dtype
    cfg.llm.tokenizer = tokenizer
    # parameters on the meta device (buffers such as the rotary tables built as usual), then
    # the checkpoint's tensors assigned in their place: no random 7B model beside the mapped
    # file, and no copy where the dtype already matches (accelerate: peft's dependency)
    with init_empty_weights(include_buffers=False):
        model = OneLLM.from_config(cfg)
    mapped = map_keys(sd, cfg)
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit the model; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in mapped.items():
        if v.shape != target[k].shape:
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(target[k].shape)}"
            )
    model.load_state_dict(
        {k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True, assign=True
    )
    return model
