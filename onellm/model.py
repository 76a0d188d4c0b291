"""The composition root: modality tokenizers -> universal encoder -> UPM -> LLaMA.

x (B, *input_shape) --tokenizer_m--> (B, T, S, W) --encoder--> (B, S+1, W)
  --projection(m)--> (B, Q, D);  LLM input: [BOS, start_m, Q tokens, end_m, text[1:]]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from experts.projection import UniversalProjection, llama_ffn_hidden
from onellm.config import ModelConfig, check_kwargs, load_config
from onellm.devices import DTYPES, resolve_device, resolve_dtype
from onellm.encoder import UniversalEncoder
from onellm.errors import ConfigError, InputError
from onellm.llm import build_llm, build_text_tokenizer
from onellm.modality import MODALITIES, Modality, check_batch, find_modality

IGNORE_INDEX = -100


def check_ids(input_ids: torch.Tensor) -> None:
    """Raise `InputError` unless `input_ids` is (B, L) with L >= 1."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InputError(
            f"text: expected input_ids (B, L) with L >= 1, got {tuple(input_ids.shape)}"
        )


def build_modality(name: str, spec: Mapping[str, Any]) -> Modality:
    """`{type: <registry name>, **kwargs}` (type defaults to `name`) -> a Modality."""
    kwargs = dict(spec or {})
    kind = kwargs.pop("type", name)
    cls = find_modality(kind, name)
    check_kwargs(cls, kwargs, f"modalities.{name}")
    return cls(**kwargs)


def embedding_rms(llm: nn.Module) -> float:
    """The RMS of the LLM's word embeddings: the scale new modality tokens start at."""
    return float(llm.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())


def _copy_matching(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter/buffer of `src` whose name and shape `dst` shares."""
    theirs = src.state_dict()
    with torch.no_grad():
        for n, t in dst.state_dict().items():
            if n in theirs and theirs[n].shape == t.shape:
                t.copy_(theirs[n])


def _copy_modality_parts(proj: UniversalProjection, src: str, dst: str) -> None:
    """Start modality `dst` from `src`'s queries, in/out projections, tags and router.
    Router rows for experts `src` does not route to start at the mean of its own rows."""
    with torch.no_grad():
        for table in (proj.queries, proj.start_tag, proj.end_tag):
            table[dst].copy_(table[src])
        proj.in_proj[dst].load_state_dict(proj.in_proj[src].state_dict())
        proj.out_proj[dst].load_state_dict(proj.out_proj[src].state_dict())
        theirs, ours = proj.routers[src].state_dict(), proj.routers[dst].state_dict()
        src_routes, dst_routes = proj.routes[src], proj.routes[dst]
        for n, t in ours.items():
            if theirs[n].shape == t.shape:
                t.copy_(theirs[n])
            elif t.dim() >= 1 and t.shape[0] == len(dst_routes):  # output layer: row per expert
                mean = theirs[n].mean(dim=0)
                for row, e in enumerate(dst_routes):
                    t[row] = theirs[n][src_routes.index(e)] if e in src_routes else mean


def build_outputs(cfg: ModelConfig, llm_width: int) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """Each `outputs.<task>`: its decoder (experts/decoders/) and the head that drives it."""
    from experts.decoders import DECODERS
    from experts.output import OUTPUT_HEADS

    heads, decoders = nn.ModuleDict(), nn.ModuleDict()
    for task, out in cfg.outputs.items():
        spec = dict(out.decoder)
        kind = spec.pop("type", None)
        if "text" in spec:  # a tiny caption encoder reads the LLM's own vocabulary
            spec["text"] = {"vocab_size": cfg.llm.vocab_size, **spec["text"]}
        if kind is None:
            raise ConfigError(
                f"outputs.{task}.decoder: name its type ({', '.join(DECODERS.names())})"
            )
        check_kwargs(DECODERS.get(kind), spec, f"outputs.{task}.decoder")
        decoder = DECODERS.build(kind, **spec)
        head_kwargs = dict(out.head)
        head_cls = OUTPUT_HEADS.get(head_kwargs.pop("type", decoder.head))
        check_kwargs(head_cls, head_kwargs, f"outputs.{task}.head")
        heads[task] = head_cls(llm_width=llm_width, out_dim=decoder.condition_dim,
                               num_experts=out.experts, use_embedding=out.use_embedding,
                               **head_kwargs)  # fmt: skip
        decoders[task] = decoder
    return heads, decoders


class OneLLM(nn.Module):
    """One multimodal LLM. Build with `OneLLM.from_config(...)`.

    Parts (module names, used by trainable patterns): `tokenizers.<m>`, `encoder`,
    `projection` (experts, routers, queries, in/out projections, tags), `llm`.
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        modalities: Mapping[str, Modality],
        tokenizers: nn.ModuleDict,
        encoder: UniversalEncoder,
        projection: UniversalProjection,
        llm: LlamaForCausalLM,
        text_tokenizer: PreTrainedTokenizerBase | None = None,
        heads: nn.ModuleDict | None = None,
        decoders: nn.ModuleDict | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.modalities = dict(modalities)
        self.tokenizers = tokenizers
        self.encoder = encoder
        self.projection = projection
        self.llm = llm
        self.text_tokenizer = text_tokenizer
        self._names = self._name_table()
        self.placeholder_ids = self._placeholders()
        self.heads = heads if heads is not None else nn.ModuleDict()  # output experts per task
        self.decoders = decoders if decoders is not None else nn.ModuleDict()
        self.output_token_ids: dict[str, int] = {}
        if len(self.heads) and text_tokenizer is not None:  # without one: ids only, no outputs
            from onellm.special_tokens import add_special_tokens

            ids = add_special_tokens(text_tokenizer, llm, [f"<{t}>" for t in self.heads])
            self.output_token_ids = {t: ids[f"<{t}>"] for t in self.heads}
        for decoder in self.decoders.values():  # tiny caption encoders read our tokenizer
            if getattr(decoder, "text", None) is not None:
                decoder.text.tokenizer = text_tokenizer

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike | Mapping | ModelConfig,
        overrides: Iterable[str] = (),
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> OneLLM:
        """Build from a YAML path, a mapping, or a `ModelConfig` (+ `key=value` overrides),
        on `device` (auto | cpu | cuda | cuda:N; default cpu) in `dtype` (default the
        config's `dtype`), as transformers' `from_pretrained(device_map=, dtype=)`."""
        cfg = config if isinstance(config, ModelConfig) else load_config(config, overrides)
        where = resolve_device("cpu" if device is None else device)
        cfg = dataclasses.replace(cfg, dtype=resolve_dtype(dtype, cfg.dtype, "config: dtype"))
        torch_dtype = DTYPES[cfg.dtype]
        encoder = UniversalEncoder.build(cfg.encoder)
        llm = build_llm(cfg.llm, torch_dtype, where)
        p = cfg.projection
        width = encoder.width
        projection = UniversalProjection(
            width=width,
            llm_width=llm.config.hidden_size,
            num_experts=p.num_experts,
            layers_per_expert=p.layers_per_expert,
            num_heads=p.num_heads,
            num_queries=p.num_queries,
            ffn_hidden=p.ffn_hidden_size or llama_ffn_hidden(width, p.multiple_of),
            router_hidden=p.router_hidden_size or 4 * width,
            router=p.router,
            norm_eps=p.norm_eps,
        )
        mods: dict[str, Modality] = {}
        tokenizers = nn.ModuleDict()
        scale = embedding_rms(llm)
        for name, spec in cfg.modalities.items():
            mod = build_modality(name, spec)
            if hasattr(mod, "bind"):  # image-like modalities take their size from the encoder
                mod.bind(encoder)
            mods[name] = mod
            tokenizers[name] = mod.build_tokenizer(encoder=encoder)
            projection.add_modality(name, output_scale=scale, experts=p.routes.get(name))
        llm.requires_grad_(False)  # frozen during alignment; stages unfreeze by pattern
        heads, decoders = build_outputs(cfg, llm.config.hidden_size)
        model = cls(
            config=cfg,
            modalities=mods,
            tokenizers=tokenizers,
            encoder=encoder,
            projection=projection,
            llm=llm,
            text_tokenizer=build_text_tokenizer(cfg.llm, cfg.chat),
            heads=heads,
            decoders=decoders,
        )
        return model.to(where, torch_dtype)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        trainable_lora: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> OneLLM:
        """Load a model saved with `save_pretrained` (safetensors + HF dirs, nothing pickled)
        onto `device` in `dtype` (default: the saved config's)."""
        from onellm.checkpoint import from_pretrained

        return from_pretrained(directory, trainable_lora=trainable_lora, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | os.PathLike, *, base: str = "store"):
        """Save config, weights and tokenizer; `base="reference"` keeps base models as paths."""
        from onellm.checkpoint import save_pretrained

        return save_pretrained(self, directory, base=base)  # type: ignore[arg-type]

    def add_lora(
        self,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    ) -> None:
        """Wrap the LLM with peft LoRA adapters (only they train in the LLM afterwards)."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.llm, "peft_config"):
            raise InputError("llm: LoRA is already on")
        cfg = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
        )
        self.llm = get_peft_model(self.llm, cfg)

    def _placeholders(self) -> dict[str, int]:
        """Each modality's placeholder id: `<m>` in the tokenizer, else one past the LLM vocab.

        Placeholder ids are never embedded (their positions are filled by modality blocks).
        """
        tok = self.text_tokenizer
        if tok is None:
            base = self.llm.config.vocab_size
            return {key: base + i for i, key in enumerate(self.modalities)}
        new = [f"<{k}>" for k in self.modalities if f"<{k}>" not in tok.get_vocab()]
        if new:
            tok.add_tokens(new, special_tokens=True)
        return {key: tok.convert_tokens_to_ids(f"<{key}>") for key in self.modalities}

    def _name_table(self) -> dict[str, str]:
        """Every accepted name (config key, registry type, its aliases) -> config key."""
        table: dict[str, str] = {}
        for key, mod in self.modalities.items():
            kind = getattr(mod, "name", key)
            aliases = MODALITIES.aliases(kind) if kind in MODALITIES else []
            for n in (kind, *aliases):
                table.setdefault(n, key)
        table.update({k: k for k in self.modalities})
        return table

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def modality_key(self, modality: str) -> str:
        """The config key for `modality` (or an alias such as rgbd/rgbn); `InputError` if absent."""
        if modality not in self._names:
            raise InputError(
                f"unknown modality {modality!r}: expected one of {', '.join(sorted(self._names))}"
            )
        return self._names[modality]

    def preprocess(self, raw: Any, modality: str) -> torch.Tensor:
        """One raw input -> its (1, *input_shape) batch on the model's device and dtype."""
        key = self.modality_key(modality)
        x = self.modalities[key].preprocess(raw)
        return x.unsqueeze(0).to(self.device, self.dtype)

    def init_modality_from(self, modality: str, source: str) -> None:
        """Start `modality`'s queries, router, in/out projections and tags (and tokenizer
        parameters whose names and shapes agree) as copies of `source`'s: a trained
        modality's way into the LLM is a better start than a random one (OneLLM's
        `--init_from_image`; here it shortens video/depth/normal alignment ~1.5x)."""
        dst, src = self.modality_key(modality), self.modality_key(source)
        if dst == src:
            raise ConfigError(f"modality {modality!r}: cannot start from itself")
        _copy_matching(self.tokenizers[src], self.tokenizers[dst])
        _copy_modality_parts(self.projection, src, dst)

    def add_modality(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        new_experts: int = 0,
        init_from: str | None = None,
        freeze_old: bool = True,
    ) -> list[str]:
        """Teach the model a new modality without changing what it does for the others.

        `spec`: `{type: <registered name | entry point | module[:Class] | file.py[:Class]>,
        **options}` (type defaults to `name`). Builds its tokenizer, queries, router, in/out
        projections and tags; `init_from` copies them from an existing modality (where
        shapes agree), as OneLLM's `--init_from_image`. `new_experts` appends k experts
        (copies of existing ones) that only the new modality routes to, so every other
        modality's output stays bit-identical. `freeze_old`: everything but the new parts
        stops training. Returns the new parameters' names.
        """
        from onellm.modality import SPECIAL_TOKEN_NAMES

        if name in self._names:
            raise ConfigError(f"modality {name!r}: this model already has it ({self._names[name]})")
        tok_vocab = self.text_tokenizer.get_vocab() if self.text_tokenizer is not None else {}
        if name in SPECIAL_TOKEN_NAMES or f"<{name}>" in tok_vocab:
            raise ConfigError(
                f"modality {name!r}: its placeholder <{name}> clashes with a special token; choose another name"
            )
        source = self.modality_key(init_from) if init_from is not None else None
        spec = dict(spec or {})
        mod = build_modality(name, spec)
        if hasattr(mod, "bind"):
            mod.bind(self.encoder)
        tokenizer = mod.build_tokenizer(encoder=self.encoder).to(self.device, self.dtype)
        before = {n for n, _ in self.named_parameters()}
        proj = self.projection
        if new_experts:
            proj.add_experts(new_experts)
        for m in self.modalities:  # earlier modalities keep exactly the experts they had
            self.config.projection.routes.setdefault(m, list(proj.routes[m]))
        proj.add_modality(name, output_scale=embedding_rms(self.llm))
        self.tokenizers[name] = tokenizer
        self.projection.to(self.device, self.dtype)
        self.modalities[name] = mod
        file, colon, attr = str(spec.get("type", "")).partition(":")
        if file.endswith(".py"):  # a saved run must find the plug-in from any directory
            spec["type"] = os.path.abspath(file) + colon + attr
        self.config.modalities[name] = spec
        self.config.projection.num_experts = proj.num_experts
        self.config.projection.routes[name] = list(proj.routes[name])
        self._names = self._name_table()
        self.placeholder_ids = self._placeholders()
        if source is not None:
            self.init_modality_from(name, source)
        new = [n for n, _ in self.named_parameters() if n not in before]
        if freeze_old:
            self.requires_grad_(False)
            params = dict(self.named_parameters())
            for n in new:
                params[n].requires_grad_(True)
        return new

    # ------------------------------------------------------------------ forward pieces
    def _features(self, x: torch.Tensor, key: str) -> torch.Tensor:
        """Checked batch -> tokenizer -> universal encoder -> features (B, S+1, W)."""
        check_batch(key, x, self.modalities[key].input_shape())
        tokenizer = self.tokenizers[key]
        needs_grad = any(p.requires_grad for m in (tokenizer, self.encoder) for p in m.parameters())
        # keep the frozen encoder out of autograd when nothing before it trains
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            tokens = tokenizer(x.to(self.encoder.clip.dtype), self.encoder)
            return self.encoder(tokens, tokenizer.position_embedding)

    def encode(self, x: torch.Tensor, modality: str, *, cached: bool = False) -> torch.Tensor:
        """Preprocessed batch (B, *input_shape) -> the Q modality tokens in LLM space (B, Q, D);
        `cached`: x is already the universal encoder's features (B, S+1, W)."""
        key = self.modality_key(modality)
        return self.projection(x if cached else self._features(x, key), key)

    @torch.no_grad()
    def routing(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Routing weights over all K projection experts for each query token: (B, Q, K);
        exactly 0 for experts outside the modality's routes."""
        key = self.modality_key(modality)
        weights = self.projection.route(self._features(x, key), key)[1]
        return self.projection.full_weights(weights.float(), key)

    def routing_report(self, modality: str, inputs: Any) -> dict[str, Any]:
        """Which experts `modality` uses on `inputs` (raw inputs, a list of them, or a
        preprocessed batch): mean weight per expert (K,) and per query token (Q, K)."""
        key = self.modality_key(modality)
        if (
            isinstance(inputs, torch.Tensor)
            and inputs.dim() == len(self.modalities[key].input_shape()) + 1
        ):
            x = inputs.to(self.device, self.dtype)
        else:
            raws = inputs if isinstance(inputs, list) else [inputs]
            x = torch.cat([self.preprocess(r, key) for r in raws])
        w = self.routing(x, key)  # (B, Q, K)
        return {
            "modality": key,
            "experts": self.projection.routes[key],
            "per_expert": w.mean(dim=(0, 1)).tolist(),
            "per_query": w.mean(dim=0).tolist(),
        }

    def modality_block(
        self, x: torch.Tensor, modality: str, *, cached: bool = False
    ) -> torch.Tensor:
        """(B, *input_shape) -> [start tag, Q tokens, end tag] embeddings (B, Q+2, D)."""
        key = self.modality_key(modality)
        tokens = self.encode(x, key, cached=cached)
        b = tokens.shape[0]
        start = self.projection.start_tag[key].to(tokens.dtype).expand(b, -1, -1)
        end = self.projection.end_tag[key].to(tokens.dtype).expand(b, -1, -1)
        return torch.cat([start, tokens, end], dim=1)

    @property
    def block_len(self) -> int:
        """Positions one modality input takes in the LLM sequence: start tag, Q tokens, end tag."""
        return self.projection.num_queries + 2

    def insert_placeholders(
        self,
        input_ids: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Put one modality block's placeholder run right after BOS (OneLLM's layout).

        `attention_mask` and `labels` are widened to match; the block is never a target.
        """
        check_ids(input_ids)
        n = self.block_len
        run = input_ids.new_full(
            (input_ids.shape[0], n), self.placeholder_ids[self.modality_key(modality)]
        )
        input_ids = torch.cat([input_ids[:, :1], run, input_ids[:, 1:]], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(attention_mask.shape[0], n)
            attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        if labels is not None:
            ignore = labels.new_full((labels.shape[0], n), IGNORE_INDEX)
            labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        return input_ids, attention_mask, labels

    def embed(
        self, input_ids: torch.Tensor, blocks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Token ids (B, L) with placeholder runs -> `inputs_embeds` (B, L, D).

        `blocks[m]` (N, Q+2, D) fills modality m's placeholder positions in reading order
        (sample by sample), after a count check; every placeholder must be filled.
        """
        check_ids(input_ids)
        blocks = dict(blocks or {})
        ids = torch.tensor(list(self.placeholder_ids.values()), device=input_ids.device)
        is_placeholder = torch.isin(input_ids, ids)
        pad = self.llm.config.pad_token_id or 0
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_placeholder, pad))
        filled = torch.zeros_like(is_placeholder)
        for modality, block in blocks.items():
            key = self.modality_key(modality)
            where = input_ids == self.placeholder_ids[key]
            given, needed = block.shape[0] * block.shape[1], int(where.sum())
            if given != needed:
                raise InputError(
                    f"{key}: expected {needed // self.block_len} input(s) for the {key} placeholders "
                    f"in the text, got {block.shape[0]}"
                )
            embeds = embeds.masked_scatter(where.unsqueeze(-1), block.to(embeds.dtype))
            filled |= where
        if (is_placeholder & ~filled).any():
            missing = sorted(
                k for k, i in self.placeholder_ids.items() if ((input_ids == i) & ~filled).any()
            )
            raise InputError(
                f"{missing[0]}: expected an input for its placeholder in the text, got none"
            )
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        inputs: torch.Tensor | None = None,
        modality: str | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The LLM's output over [BOS, start, Q tokens, end, text[1:]] (or text alone).

        `loss` is the cross-entropy on `labels` != -100; the modality block is never a target.
        The logits (and labels) cover the widened sequence, block included. `features`
        (B, S+1, W): the universal encoder's outputs for the inputs (a feature cache's), given
        instead of `inputs`.
        """
        blocks = None
        if inputs is not None and features is not None:
            raise InputError("expected an input or its cached features, got both")
        if features is not None:
            inputs = features
        if inputs is not None or modality is not None:
            if inputs is None or modality is None:
                raise InputError(
                    "input and modality go together: got "
                    + (
                        "an input without a modality"
                        if modality is None
                        else f"modality {modality!r} without an input"
                    )
                )
            key = self.modality_key(modality)
            input_ids, attention_mask, labels = self.insert_placeholders(
                input_ids, key, attention_mask, labels
            )
            block = self.modality_block(inputs, key, cached=features is not None)
            if block.shape[0] != input_ids.shape[0]:
                raise InputError(
                    f"{key}: expected a batch of {input_ids.shape[0]} inputs to match input_ids, got {block.shape[0]}"
                )
            blocks = {key: block}
        return self.llm(
            inputs_embeds=self.embed(input_ids, blocks),
            attention_mask=attention_mask,
            labels=labels,
            **llm_kwargs,
        )

    def logits(
        self,
        input_ids: torch.Tensor,
        inputs: torch.Tensor | None = None,
        modality: str | None = None,
    ) -> torch.Tensor:
        """Logits aligned as OneLLM's forward returns them: (B, L, V).

        With a modality, row 0 is the end-tag position and rows 1.. are text tokens 1..;
        BOS, the start tag and the modality tokens get no logits.
        """
        out = self(input_ids, inputs, modality, use_cache=False)
        prefix = self.block_len if inputs is not None else 0
        return out.logits[:, prefix:]

    # ------------------------------------------------------------------ talking to it
    def chat(
        self,
        inputs: Any = None,
        modality: str | None = None,
        prompt: str | None = None,
        history: list[tuple[str, str]] | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stream: bool = False,
        **generate_kwargs: Any,
    ):
        """Answer `prompt` about `inputs` (greedy unless `temperature` > 0).

        `inputs`: a raw input of `modality` (path, PIL, array, tensor), a list of them (a
        batch: returns a list), a dict `{modality: raw}` for several modalities in one
        prompt (placed at their `<m>` placeholders, else first), or None for text only.
        No prompt: the model captions its input. `history`: earlier (prompt, reply) turns.
        `stream=True` returns an iterator of text pieces. Other keyword arguments go to
        transformers' `generate` (`use_cache=False`, `num_beams`, ...).
        """
        from onellm.chat import chat

        return chat(
            self,
            inputs,
            modality,
            prompt,
            history,
            max_new_tokens,
            temperature,
            top_p,
            stream,
            **generate_kwargs,
        )
