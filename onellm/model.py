"""The composition root: modality tokenizers -> universal encoder -> UPM -> LLaMA -> outputs.

x (B, *input_shape) --tokenizer_m--> (B, T, S, W) --encoder--> (B, S+1, W)
  --projection(m)--> (B, Q, D) --[start_m, Q tokens, end_m]--> the run of <m> ids
Built by onellm/modeling/build.py, changed by onellm/modeling/surgery.py, laid out by
onellm/modeling/layout.py; the output experts (onellm/modeling/outputs.py) read the LLM's
states at `<seg>`, `<gen>`, ... Saved and loaded by onellm/checkpoints/pretrained.py,
chatted with by onellm/inference/chat.py. None of them imports this module back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from onellm.checkpoints import pretrained
from onellm.config import ModelConfig, load_config
from onellm.data import packing
from onellm.errors import InputError
from onellm.inference import chat as chatting
from onellm.inference import routing
from onellm.modeling import mixing as moai_mixing
from onellm.modeling import modality_blocks, quantize, surgery
from onellm.modeling.build import build_model, name_table, rebuilt_config
from onellm.modeling.devices import resolve_device
from onellm.modeling.llm_experts import LLMExperts
from onellm.modeling.mixing import Mixer


class OneLLM(nn.Module):
    """One multimodal LLM. Build with `OneLLM.from_config(...)` or `from_pretrained(...)`.

    Parts (module names, used by trainable patterns): `tokenizers.<m>`, `encoder`,
    `projection` (experts, routers, queries, in/out projections, tags), `projections.<kind>`
    (kinds single modalities use instead, `projection.by_modality`), `llm`,
    `outputs.<task>` (`head`, `decoder`), `moai` (compressor, mixers) when configured.
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        modalities,
        tokenizers: nn.ModuleDict,
        encoder,
        projection,
        llm,
        text_tokenizer,
        layout,
        outputs,
        moai=None,
        projections=None,
    ) -> None:
        super().__init__()
        self.base_config = config  # what the modules do not say: sizes, chat template, outputs
        self.specs = {k: dict(v) for k, v in config.modalities.items()}
        self.modalities = dict(modalities)
        self.names = name_table(self.modalities)
        self.tokenizers, self.encoder, self.projection = tokenizers, encoder, projection
        self.llm, self.text_tokenizer, self.layout = llm, text_tokenizer, layout
        self.outputs = outputs
        self.moai: Mixer | None = moai  # MoAI's compressor + mixer (experts/moai/)
        # the other projection kinds some modalities use (`projection.by_modality`), by kind
        self.projections = projections if projections is not None else nn.ModuleDict()
        self.quantization: quantize.Quantization | None = None  # set as the LLM loads
        # experts inside the LLM (`llm_experts:`, onellm/modeling/llm_experts.py), set by build
        self.llm_experts: LLMExperts | None = None

    @property
    def config(self) -> ModelConfig:
        """The config that rebuilds this model: derived from the modules, never edited."""
        return rebuilt_config(self)

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | Mapping | ModelConfig,
        overrides: Iterable[str] = (),
        *,
        device=None,
        dtype=None,
        quantization: str | None = None,
    ) -> OneLLM:
        """Build from a YAML path, a mapping, or a `ModelConfig` (+ `key=value` overrides),
        on `device` (auto | cpu | cuda | cuda:N; default cpu) in `dtype` (default the
        config's), as transformers' `from_pretrained(device_map=, dtype=)`; `quantization`:
        None, "8bit" or "4bit" LLM weights (onellm/modeling/quantize.py)."""
        cfg = config if isinstance(config, ModelConfig) else load_config(config, overrides)
        q = quantize.resolve(quantization, resolve_device("cpu" if device is None else device))
        model = build_model(cfg, cls, device, dtype, q)
        quantize.after_loading(model, q)
        return model

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        trainable_lora: bool = False,
        device=None,
        dtype=None,
        quantization: str | None = None,
        overrides: Iterable[str] = (),
    ) -> OneLLM:
        """Load a model saved with `save_pretrained` (safetensors + HF dirs, nothing pickled);
        `quantization`: None, "8bit" or "4bit" LLM weights (onellm/modeling/quantize.py);
        `overrides`: `key=value` changes to its config (its weights load where they fit)."""
        overrides = list(overrides)
        cfg = pretrained.saved_config(directory, overrides)
        q = quantize.resolve(quantization, resolve_device("cpu" if device is None else device))
        model = build_model(cfg, cls, device, dtype, q)
        pretrained.load_weights(
            model, directory, trainable_lora=trainable_lora, overrides=overrides
        )
        quantize.after_loading(model, q)  # after the LoRA: its factors stay unquantised
        return model

    def save_pretrained(self, directory: str | os.PathLike, *, base: str = "store"):
        """Save config, weights and tokenizer; `base="reference"` keeps base models as paths."""
        return pretrained.save_pretrained(self, directory, base=base)  # type: ignore[arg-type]

    add_lora = surgery.add_lora
    add_modality = surgery.add_modality
    init_modality_from = surgery.init_modality_from
    merge_llm_experts = surgery.merge_llm_experts  # one modality's LLM expert into plain weights

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.device

    # a modality's input -> its block of LLM embeddings (onellm/modeling/modality_blocks.py)
    modality_key = modality_blocks.modality_key
    projector = modality_blocks.projector
    preprocess = modality_blocks.preprocess
    features = modality_blocks.features
    encode = modality_blocks.encode
    modality_block = modality_blocks.modality_block

    def embed(self, input_ids: torch.Tensor, blocks: Mapping[str, torch.Tensor] | None = None):
        """Ids (B, L) with placeholder runs -> `inputs_embeds` (B, L, D), runs filled by `blocks`."""
        blocks = {self.modality_key(m): b for m, b in (blocks or {}).items()}
        return self.layout.scatter(self.llm.get_input_embeddings(), input_ids, blocks)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs: Mapping[str, torch.Tensor] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        aux: Sequence[str] | None = None,
        **llm_kwargs: Any,
    ):
        """The LLM over `input_ids` laid out by onellm/modeling/layout.py, each placeholder
        run filled from `inputs[m]` (N_m, *input_shape) in reading order, or from
        `features[m]` (N_m, S+1, W), the universal encoder's outputs (a feature cache's).
        `loss`: the cross-entropy on `labels` != -100 (placeholder runs never are targets).
        `aux`: one auxiliary text per row for a MoAI mixer (experts/moai/). Packed rows:
        `position_ids` that restart at each sample (onellm/data/packing.py, `llm_call`)."""
        both = set(inputs or {}) & set(features or {})
        if both:
            raise InputError(
                f"{sorted(both)[0]}: expected an input or its cached features, got both"
            )
        blocks = {m: self.modality_block(x, m) for m, x in (inputs or {}).items()}
        blocks |= {m: self.modality_block(f, m, cached=True) for m, f in (features or {}).items()}
        embeds = self.embed(input_ids, blocks)
        mask, position_ids = packing.llm_call(attention_mask, llm_kwargs)
        with self.mixing(input_ids, aux, attention_mask, position_ids):
            return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, **llm_kwargs)

    mixing = moai_mixing.mixing  # MoAI's aux texts into the LLM calls inside (modeling/mixing.py)

    chat = chatting.chat  # a reply about raw inputs (onellm/inference/chat.py)
    routing_report = routing.routing_report  # which experts a modality uses on some inputs
