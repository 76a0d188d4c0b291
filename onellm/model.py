"""The composition root: modality tokenizers -> universal encoder -> UPM -> LLaMA -> outputs.

x (B, *input_shape) --tokenizer_m--> (B, T, S, W) --encoder--> (B, S+1, W)
  --projection(m)--> (B, Q, D) --[start_m, Q tokens, end_m]--> the run of <m> ids
Built by onellm/build.py, changed by onellm/surgery.py, laid out by onellm/layout.py; the
output experts (experts/outputs.py) read the LLM's states at `<seg>`, `<gen>`, ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from onellm.config import ModelConfig, load_config
from onellm.errors import InputError
from onellm.modeling import surgery
from onellm.modeling.modality import check_batch


class OneLLM(nn.Module):
    """One multimodal LLM. Build with `OneLLM.from_config(...)` or `from_pretrained(...)`.

    Parts (module names, used by trainable patterns): `tokenizers.<m>`, `encoder`,
    `projection` (experts, routers, queries, in/out projections, tags), `projections.<kind>`
    (kinds single modalities use instead, `projection.by_modality`), `llm`,
    `outputs.<task>` (`head`, `decoder`), `moai` (compressor, mixers) when configured.
    """

    def __init__(self, *, config: ModelConfig, modalities, tokenizers: nn.ModuleDict, encoder,
                 projection, llm, text_tokenizer, layout, outputs, moai=None,
                 projections=None) -> None:  # fmt: skip
        super().__init__()
        from onellm.modeling.build import name_table

        self.base_config = config  # what the modules do not say: sizes, chat template, outputs
        self.specs = {k: dict(v) for k, v in config.modalities.items()}
        self.modalities = dict(modalities)
        self.names = name_table(self.modalities)
        self.tokenizers, self.encoder, self.projection, self.llm = (
            tokenizers,
            encoder,
            projection,
            llm,
        )
        self.text_tokenizer, self.layout, self.outputs = text_tokenizer, layout, outputs
        self.moai = moai  # MoAI's compressor + mixer (experts/moai.py), or None
        # the other projection kinds some modalities use (`projection.by_modality`), by kind
        self.projections = projections if projections is not None else nn.ModuleDict()

    @property
    def config(self) -> ModelConfig:
        """The config that rebuilds this model: derived from the modules, never edited."""
        from onellm.modeling.build import parts_dtype

        p, projection = self.projection, self.base_config.projection
        if hasattr(p, "routes"):  # a routed projection (the UPM) grows experts and routes
            every = list(range(p.num_experts))
            routes = {m: list(r) for m, r in p.routes.items() if list(r) != every}
            projection = dataclasses.replace(projection, num_experts=p.num_experts, routes=routes,
                                             router=dict(p.router_spec))  # fmt: skip
        return dataclasses.replace(self.base_config, modalities=dict(self.specs),
                                   projection=projection, dtype=parts_dtype(self))  # fmt: skip

    @classmethod
    def from_config(cls, config: str | os.PathLike | Mapping | ModelConfig,
                    overrides: Iterable[str] = (), *, device=None, dtype=None,
                    quantization: str | None = None) -> OneLLM:  # fmt: skip
        """Build from a YAML path, a mapping, or a `ModelConfig` (+ `key=value` overrides),
        on `device` (auto | cpu | cuda | cuda:N; default cpu) in `dtype` (default the
        config's), as transformers' `from_pretrained(device_map=, dtype=)`; `quantization`:
        None, "8bit" or "4bit" LLM weights (onellm/quantize.py)."""
        from onellm.modeling import quantize
        from onellm.modeling.build import build_model
        from onellm.modeling.devices import resolve_device

        cfg = config if isinstance(config, ModelConfig) else load_config(config, overrides)
        q = quantize.resolve(quantization, resolve_device("cpu" if device is None else device))
        model = build_model(cfg, device, dtype, q)
        quantize.after_loading(model, q)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, trainable_lora: bool = False,
                        device=None, dtype=None, quantization: str | None = None,
                        overrides: Iterable[str] = ()) -> OneLLM:  # fmt: skip
        """Load a model saved with `save_pretrained` (safetensors + HF dirs, nothing pickled);
        `quantization`: None, "8bit" or "4bit" LLM weights (onellm/quantize.py);
        `overrides`: `key=value` changes to its config (its weights load where they fit)."""
        from onellm.checkpoints.pretrained import from_pretrained

        return from_pretrained(directory, trainable_lora=trainable_lora, device=device,
                               dtype=dtype, quantization=quantization,
                               overrides=list(overrides))  # fmt: skip

    def save_pretrained(self, directory: str | os.PathLike, *, base: str = "store"):
        """Save config, weights and tokenizer; `base="reference"` keeps base models as paths."""
        from onellm.checkpoints.pretrained import save_pretrained

        return save_pretrained(self, directory, base=base)  # type: ignore[arg-type]

    add_lora = surgery.add_lora
    add_modality = surgery.add_modality
    init_modality_from = surgery.init_modality_from

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def projector(self, modality: str) -> nn.Module:
        """The projection modality `modality` goes through: `projection`, or the kind
        `projection.by_modality` names for it."""
        kind = self.base_config.projection.kind_of(self.modality_key(modality))
        return self.projection if kind is None else self.projections[kind]

    def modality_key(self, modality: str) -> str:
        """The config key for `modality` (or an alias such as rgbd/rgbn); `InputError` if absent."""
        if modality not in self.names:
            raise InputError(
                f"unknown modality {modality!r}: expected one of {', '.join(sorted(self.names))}"
            )
        return self.names[modality]

    def preprocess(self, raw: Any, modality: str) -> torch.Tensor:
        """One raw input -> its (1, *input_shape) batch on the model's device and dtype."""
        key = self.modality_key(modality)
        return self.modalities[key].preprocess(raw).unsqueeze(0).to(self.device, self.dtype)

    def features(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Checked batch -> tokenizer -> universal encoder -> features (B, S+1, W), or per
        frame (B, T, S+1, W) for a projection that reads frames."""
        key = self.modality_key(modality)
        check_batch(key, x, self.modalities[key].input_shape())
        tokenizer = self.tokenizers[key]
        trains = any(p.requires_grad for m in (tokenizer, self.encoder) for p in m.parameters())
        # keep the frozen encoder out of autograd when nothing before it trains
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            tokens = tokenizer(x.to(self.encoder.clip.dtype), self.encoder)
            pool = not self.projector(key).reads_frames  # a perceiver reads each frame
            return self.encoder(tokens, tokenizer.position_embedding, pool=pool)

    def encode(self, x: torch.Tensor, modality: str, *, cached: bool = False) -> torch.Tensor:
        """(B, *input_shape) -> the modality's N tokens in LLM space (B, N, D) (N: the
        projection's `num_tokens`); `cached`: x is already the encoder's features."""
        key = self.modality_key(modality)
        return self.projector(key)(x if cached else self.features(x, key), key)

    def modality_block(
        self, x: torch.Tensor, modality: str, *, cached: bool = False
    ) -> torch.Tensor:
        """(B, *input_shape) -> [start tag, N tokens, end tag] embeddings (B, N+2, D)."""
        key = self.modality_key(modality)
        tokens = self.encode(x, key, cached=cached)
        proj = self.projector(key)
        start, end = (t[key].to(tokens.dtype).expand(tokens.shape[0], -1, -1)
                      for t in (proj.start_tag, proj.end_tag))  # fmt: skip
        return torch.cat([start, tokens, end], dim=1)

    def embed(self, input_ids: torch.Tensor, blocks: Mapping[str, torch.Tensor] | None = None):
        """Ids (B, L) with placeholder runs -> `inputs_embeds` (B, L, D), runs filled by `blocks`."""
        blocks = {self.modality_key(m): b for m, b in (blocks or {}).items()}
        return self.layout.scatter(self.llm.get_input_embeddings(), input_ids, blocks)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, inputs: Mapping[str, torch.Tensor] | None = None,
                features: Mapping[str, torch.Tensor] | None = None,
                aux: Sequence[str] | None = None, **llm_kwargs: Any):  # fmt: skip
        """The LLM over `input_ids` laid out by onellm/layout.py, each placeholder run
        filled from `inputs[m]` (N_m, *input_shape) in reading order, or from `features[m]`
        (N_m, S+1, W), the universal encoder's outputs (a feature cache's). `loss`: the
        cross-entropy on `labels` != -100 (placeholder runs never are targets). `aux`: one
        auxiliary text per row for a MoAI mixer (experts/moai.py)."""
        both = set(inputs or {}) & set(features or {})
        if both:
            raise InputError(
                f"{sorted(both)[0]}: expected an input or its cached features, got both"
            )
        blocks = {m: self.modality_block(x, m) for m, x in (inputs or {}).items()}
        blocks |= {m: self.modality_block(f, m, cached=True) for m, f in (features or {}).items()}
        embeds = self.embed(input_ids, blocks)
        with self.mixing(input_ids, aux, attention_mask):
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                            **llm_kwargs)  # fmt: skip

    @contextlib.contextmanager
    def mixing(self, input_ids: torch.Tensor, aux: Sequence[str] | None,
               attention_mask: torch.Tensor | None = None) -> Iterator[None]:  # fmt: skip
        """The LLM calls inside mix in the auxiliary texts `aux` (one per row of `input_ids`;
        `attention_mask`: its padding) through the MoAI mixer; without one, nothing happens
        (and `aux` is refused)."""
        if self.moai is None:
            if aux is not None:
                raise InputError(
                    "aux: this model has no MoAI mixer (a `moai:` section), got aux texts"
                )
            yield
            return
        aux = [""] * len(input_ids) if aux is None else aux
        with self.moai.mixing(self, input_ids, aux, attention_mask):
            yield

    def chat(self, inputs: Any = None, modality: str | None = None, prompt: str | None = None,
             history: list[tuple[str, str]] | None = None, **kwargs: Any):  # fmt: skip
        """Answer `prompt` about `inputs` (greedy unless `temperature` > 0); onellm/chat.py.

        `inputs`: a raw input of `modality` (path, PIL, array, tensor), a list of them (a
        batch: returns a list), a dict `{modality: raw}` for several modalities in one
        prompt (placed at their `<m>` placeholders, else first), or None for text only.
        No prompt: the model captions its input. `history`: earlier (prompt, reply) turns.
        `max_new_tokens`, `temperature`, `top_p`, `stream=True` (an iterator of text
        pieces); other keyword arguments go to transformers' `generate`.
        """
        from onellm.inference.chat import chat

        return chat(self, inputs, modality, prompt, history, **kwargs)

    def routing_report(self, modality: str, inputs: Any) -> dict[str, Any]:
        """Which experts `modality` uses on `inputs`; see onellm/routing.py."""
        from onellm.inference.routing import routing_report

        if not hasattr(self.projector(modality), "routes"):
            p = self.base_config.projection
            kind = p.kind_of(self.modality_key(modality)) or p.type
            raise InputError(
                f"routing: {modality} goes through the {kind} projection, which has no router"
            )
        return routing_report(self, modality, inputs)
