"""The official OneLLM checkpoint's keys (csuhan/OneLLM, `llma.` prefix removed) -> this
library's state-dict keys: transformers' CLIP and Llama, the UPM, the modality tokenizers.
`wq`/`wk` rows are permuted from OneLLM's interleaved rotary pairs to HF's rotate-half
layout; CLIP's fused q/k/v projection splits into HF's three.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from onellm.config import ModelConfig
from onellm.errors import CheckpointError

# OneLLM's modality names -> this library's
MODALITY_NAMES = {"rgbd": "depth", "rgbn": "normal"}
# CLIP keys that OneLLM keeps but never uses (text-tower leftovers, the unused projection)
_UNUSED = re.compile(
    r"^clip\.(visual\.proj|token_embedding\..*|positional_embedding|ln_final\..*|text_projection|logit_scale)$"
)


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk from interleaved pairs (x[2i], x[2i+1]) to HF's halves (x[i], x[i+d/2])."""
    out, dim = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


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
