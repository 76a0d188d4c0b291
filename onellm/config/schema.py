"""The model config's schema: dataclasses that `load_config` validates a YAML into, each
naming what its keys mean. Unknown keys are refused by name (onellm/config/loading.py)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class EncoderConfig:
    """Universal encoder: a CLIP vision tower (local HF dir, or random from these sizes)."""

    path: str | None = None
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass
class LLMConfig:
    """The language model: `LlamaForCausalLM` (local HF dir, or random from these sizes)."""

    path: str | None = None
    tokenizer: str | None = None  # HF tokenizer dir; defaults to `path`
    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int = 192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    attn_implementation: str = "auto"  # auto: flash_attention_2 on CUDA when installed, else sdpa


@dataclasses.dataclass
class ProjectionConfig:
    """How encoder features become LLM tokens. `type`: the projection kind (onellm/modeling/projection.py):
    `upm` (OneLLM's universal projection module: K experts of N blocks, per-modality queries
    and routers; the fields below), `perceiver` (BLIP-3) or `mlp` (LLaVA), each with its
    own keyword arguments in `options`; `num_queries` and `num_heads` are shared.
    `by_modality` gives single modalities another kind (`{image: {type: mlp}}`)."""

    type: str = "upm"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the kind's own arguments
    # modality -> {type: kind, **options}: another kind for that modality (one instance per kind)
    by_modality: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def kind_of(self, modality: str) -> str | None:
        """The kind `by_modality` gives `modality`, or None (it goes through `type`)."""
        return self.by_modality.get(modality, {}).get("type")

    num_experts: int = 3
    layers_per_expert: int = 8
    num_heads: int = 16
    num_queries: int = 30
    ffn_hidden_size: int | None = None  # None: LLaMA's rule from the width and multiple_of
    multiple_of: int = 256
    norm_eps: float = 1e-5
    router_hidden_size: int | None = None  # None: 4 x encoder width, as OneLLM
    router: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "soft"})
    # modality -> the expert indices its router weighs; absent: all (see add_modality)
    routes: dict[str, list[int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ChatConfig:
    """The conversation layout, used the same way in training and in inference.

    A prompt renders as `system`, then per turn `user + question + separator + assistant`
    followed (in history and in training) by `answer + separator`. Generation stops at EOS
    or at any of `stop`. With no prompt and no history the model captions its input (the
    alignment stages' layout: the modality block, then the caption).
    """

    system: str = ""
    user: str = "### Human: "
    assistant: str = "### Assistant: "
    separator: str = "\n"
    stop: list[str] = dataclasses.field(default_factory=lambda: ["###"])


@dataclasses.dataclass
class OutputConfig:
    """One output task (`seg`, `gen`): its special token's head and its decoder.

    `decoder`: `{type: sam | diffusion, **kwargs}` (experts/output/decoders/). `tokens`: signal
    tokens per group (gen: N `<gen>` in a row make one image). `head`: extra head kwargs.
    """

    decoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    experts: int = 2
    use_embedding: bool = True
    tokens: int = 1
    head: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: dict[str, float] = dataclasses.field(default_factory=dict)  # seg: bce, dice; gen: mse
    # whether the decoder's loss reaches the LLM (LISA: yes). Measured in stage 5 (600 steps):
    # with it seg_miou 0.44, without 0.28 (caption forgetting the same either way)
    tune_llm: bool = True


@dataclasses.dataclass
class ModelConfig:
    """The whole model. `modalities` maps a name to `{type: <registry name>, **kwargs}`."""

    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    modalities: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    chat: ChatConfig = dataclasses.field(default_factory=ChatConfig)
    outputs: dict[str, OutputConfig] = dataclasses.field(default_factory=dict)  # <seg>, <gen>, ...
    # MoAI's auxiliary sources, compressor and mixer (experts/moai/mixer.py); None: none
    moai: dict[str, Any] | None = None
    # experts inside the LLM: {kind: lora_per_modality | moe_layers, ...} (experts/llm/); None: a dense LLM
    llm_experts: dict[str, Any] | None = None
    dtype: str = "float32"
    vars: dict[str, Any] = dataclasses.field(default_factory=dict)  # free-form, for ${vars.x}
