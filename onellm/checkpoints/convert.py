"""Load official OneLLM checkpoints (csuhan/OneLLM, `llma.`-prefixed keys) into `OneLLM`.

Every size is read from tensor shapes; only what shapes cannot tell is an argument (head
counts, the audio stride). Keys map onto transformers' CLIP and Llama; `wq`/`wk` rows are
permuted from OneLLM's interleaved rotary pairs to HF's rotate-half layout.
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

from onellm.config import EncoderConfig, LLMConfig, ModelConfig, ProjectionConfig
from onellm.errors import CheckpointError
from onellm.model import OneLLM

# OneLLM's modality names -> this library's
MODALITY_NAMES = {"rgbd": "depth", "rgbn": "normal"}
# CLIP keys that OneLLM keeps but never uses (text-tower leftovers, the unused projection)
_UNUSED = re.compile(
    r"^clip\.(visual\.proj|token_embedding\..*|positional_embedding|ln_final\..*|text_projection|logit_scale)$"
)


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


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk from interleaved pairs (x[2i], x[2i+1]) to HF's halves (x[i], x[i+d/2])."""
    out, dim = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


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


def map_keys(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """OneLLM keys -> this library's state-dict keys (unused CLIP leftovers dropped)."""
    heads = cfg.llm.num_attention_heads
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _UNUSED.match(key):
            continue
        for new_key, tensor in _map_one(key, value, heads):
            out[new_key] = tensor
    return out


_LLM = {
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_EXPERT = {
    "attention.wq": "q_proj",
    "attention.wk": "k_proj",
    "attention.wv": "v_proj",
    "attention.wo": "o_proj",
    "feed_forward.w1": "gate_proj",
    "feed_forward.w2": "down_proj",
    "feed_forward.w3": "up_proj",
    "attention_norm": "attn_norm",
    "ffn_norm": "mlp_norm",
}
_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_CLIP = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
_TOKENIZER = {"audio": "proj", "imu": "proj", "fmri": "proj", "point": "proj"}


def _map_one(key: str, v: torch.Tensor, heads: int) -> list[tuple[str, torch.Tensor]]:
    parts = key.split(".")
    mod = lambda name: MODALITY_NAMES.get(name, name)  # noqa: E731
    if key == "tok_embeddings.weight":
        return [("llm.model.embed_tokens.weight", v)]
    if key == "norm.weight":
        return [("llm.model.norm.weight", v)]
    if key == "output.weight":
        return [("llm.lm_head.weight", v)]
    if parts[0] == "layers":
        i, rest = parts[1], ".".join(parts[2:-1])
        base = f"llm.model.layers.{i}"
        if rest in ("attention.wq", "attention.wk"):
            proj = "q_proj" if rest.endswith("wq") else "k_proj"
            return [(f"{base}.self_attn.{proj}.weight", permute_rotary(v, heads))]
        if rest in _LLM:
            return [(f"{base}.{_LLM[rest]}.{parts[-1]}", v)]
    if key.startswith("clip.visual."):
        sub = key.removeprefix("clip.visual.")
        if sub in _CLIP:
            return [(f"encoder.clip.{_CLIP[sub]}", v)]
        m = re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", sub)
        if m:  # one fused q/k/v projection -> HF's three
            j, kind = m.groups()
            base = f"encoder.clip.encoder.layers.{j}.self_attn"
            # clones: views of one storage would stay tied once assigned to three parameters
            return [
                (f"{base}.{p}.{kind}", t.clone())
                for p, t in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3), strict=True)
            ]
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", sub)
        if m and m.group(2) in _CLIP_BLOCK:
            j, name, kind = m.groups()
            return [(f"encoder.clip.encoder.layers.{j}.{_CLIP_BLOCK[name]}.{kind}", v)]
    if parts[0] == "resample_layers":
        e, layer, rest = parts[1], parts[2], ".".join(parts[3:-1])
        if rest in _EXPERT:
            return [(f"projection.experts.{e}.layers.{layer}.{_EXPERT[rest]}.{parts[-1]}", v)]
    if parts[0] == "conv1":
        # point: conv1.point.conv1.weight -> tokenizers.point.proj.weight
        return [(f"tokenizers.{mod(parts[1])}.{_TOKENIZER[parts[1]]}.{parts[-1]}", v)]
    if parts[0] == "positional_embedding":
        return [(f"tokenizers.{mod(parts[1])}.position_embedding", v)]
    if parts[0] == "resample_tokens":
        return [(f"projection.queries.{mod(parts[1])}", v)]
    if parts[0] == "routers":
        return [(f"projection.routers.{mod(parts[1])}.mlp.{'.'.join(parts[2:])}", v)]
    if parts[0] in ("clip_proj1", "clip_proj2"):
        target = "in_proj" if parts[0] == "clip_proj1" else "out_proj"
        return [(f"projection.{target}.{mod(parts[1])}.{'.'.join(parts[2:])}", v)]
    if parts[0] in ("start_tag", "end_tag"):
        return [(f"projection.{parts[0]}.{mod(parts[1])}", v)]
    raise CheckpointError(f"unexpected key in OneLLM checkpoint: {key!r}")


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
