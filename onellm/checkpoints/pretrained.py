"""Saved models: a directory a user can load back, in each part's own ecosystem format.

    RUN/config.yaml        the ModelConfig (base-model paths relative to RUN when stored)
    RUN/model.safetensors  everything that is not a base model: tokenizers, projection (UPM)
    RUN/encoder/           CLIPVisionModel.save_pretrained  (base="store")
    RUN/llm/               LlamaForCausalLM.save_pretrained (base="store"; LoRA kept apart)
    RUN/lora/              peft adapter (adapter_config.json + adapter_model.safetensors);
                           several (llm_experts' per-modality LoRA): RUN/lora/<name>/ each
    RUN/tokenizer/         the text tokenizer
    RUN/plugins/           the modality plug-ins the config names by file (plugin_files.py)
Nothing is pickled: safetensors and JSON/YAML only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import yaml
from peft import LoraConfig, PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from onellm.checkpoints.plugin_files import keep_plugins
from onellm.config import ModelConfig, load_config, to_dict
from onellm.errors import CheckpointError
from onellm.modeling.llm import base_llm, has_lora

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from onellm.model import OneLLM

BASE_PREFIXES = ("encoder.", "llm.")


# safetensors lays a whole file out in memory before writing it: 1 GB shards keep saving a 7B
# model from mapped weights under its own size (onellm convert of a 14.1 GiB OneLLM-7B: peak
# 12.6 GiB, bench/official_checkpoint.py)
SHARD = "1GB"


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a `CheckpointError`
    naming it (safetensors raises its own SafetensorError or OSError)."""
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: expected a complete safetensors file, got a truncated or corrupt one ({e})"
        ) from e


def own_state_dict(model: OneLLM) -> dict[str, torch.Tensor]:
    """The parameters and buffers that are not part of a base model (encoder, LLM)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(BASE_PREFIXES)}


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs saved before the output experts became one module kept `heads.<task>.` and
    `decoders.<task>.`; today they are `outputs.<task>.head.` and `outputs.<task>.decoder.`."""
    out = {}
    for k, v in state.items():
        part, _, rest = k.partition(".")
        if part in ("heads", "decoders"):
            task, _, rest = rest.partition(".")
            k = f"outputs.{task}.{part[:-1]}.{rest}"
        out[k] = v
    return out


def save_pretrained(
    model: OneLLM, directory: str | os.PathLike, base: Literal["store", "reference"] = "store"
) -> Path:
    """Write `model` to `directory` (created). `base="reference"` keeps the encoder and LLM
    as the paths they were loaded from instead of copying them (they must be unchanged)."""
    if model.quantization is not None:
        raise CheckpointError(
            f"save_pretrained: this model's LLM is quantised ({model.quantization}) for "
            "inference; save the model it was loaded from instead"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = to_dict(model.config)
    classes = {k: type(m) for k, m in model.modalities.items()}
    cfg["modalities"] = keep_plugins(cfg["modalities"], classes, out)  # no machine's paths
    llm = base_llm(model.llm)
    if base == "reference":
        missing = [
            p
            for p, v in (("encoder.path", cfg["encoder"]["path"]), ("llm.path", cfg["llm"]["path"]))
            if not v
        ]
        if missing:
            raise CheckpointError(
                f"base='reference' needs {missing[0]} (a random base model must be stored)"
            )
        if any(p.requires_grad for n, p in llm.named_parameters() if "lora_" not in n):
            raise CheckpointError(
                "base='reference': the LLM is being fine-tuned, so it must be stored"
            )
        cfg["encoder"]["path"], cfg["llm"]["path"] = (
            str(Path(cfg["encoder"]["path"]).resolve()),
            str(Path(cfg["llm"]["path"]).resolve()),
        )
    elif base == "store":
        model.encoder.clip.save_pretrained(out / "encoder", max_shard_size=SHARD)
        base_sd = {
            k.replace(".base_layer", ""): v for k, v in llm.state_dict().items() if "lora_" not in k
        }
        llm.save_pretrained(out / "llm", state_dict=base_sd, max_shard_size=SHARD)
        cfg["encoder"]["path"], cfg["llm"]["path"] = "encoder", "llm"
    else:
        raise CheckpointError(f"base must be 'store' or 'reference', got {base!r}")
    if model.text_tokenizer is not None:
        model.text_tokenizer.save_pretrained(out / "tokenizer")
        cfg["llm"]["tokenizer"] = "tokenizer"
    if has_lora(model.llm):
        model.llm.save_pretrained(out / "lora")
    save_file(
        {k: v.contiguous() for k, v in own_state_dict(model).items()}, out / "model.safetensors"
    )
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def saved_config(directory: str | os.PathLike, overrides: Sequence[str] = ()) -> ModelConfig:
    """The config of a directory written by `save_pretrained`, its stored base models' paths
    made absolute, changed by `overrides` (`key=value`)."""
    d = Path(directory)
    if not (d / "config.yaml").is_file() or not (d / "model.safetensors").is_file():
        raise CheckpointError(
            f"{d}: not a saved onellm model (expected config.yaml and model.safetensors)"
        )
    cfg = load_config(d / "config.yaml", overrides)
    for part, key in ((cfg.encoder, "path"), (cfg.llm, "path"), (cfg.llm, "tokenizer")):
        value = getattr(part, key)
        if value is not None and not Path(value).is_absolute():
            setattr(part, key, str(d / value))  # stored parts live inside the run
    return cfg


def same_shape(saved: Path, config: LoraConfig) -> bool:
    """Whether the LoRA saved with adapter config `saved` has `config`'s rank, scale and
    modules (its weights then load into that adapter as they are)."""
    theirs = json.loads(saved.read_text())
    return (
        theirs.get("r") == config.r
        and theirs.get("lora_alpha") == config.lora_alpha
        and set(theirs.get("target_modules") or ()) == set(config.target_modules)
    )


def load_adapters(model: OneLLM, directory: Path, *, trainable: bool, changed: bool) -> None:
    """Each peft adapter the model was built with (`llm_experts:`'s, named by expert) from
    where peft's `save_pretrained` put it: `directory` for `default`, else `directory/<name>`.
    With a changed config, an adapter the run did not save starts as the run's one shared
    LoRA where that has its shape (a run trained with `lora:` given per-modality experts:
    every position starts as it was), else as built."""
    shared = directory / "adapter_config.json"
    for name in list(model.llm.peft_config):
        path = directory if name == "default" else directory / name
        if not (path / "adapter_config.json").is_file():
            if not changed:
                raise CheckpointError(f"{directory}: expected the saved adapter {name!r}, got none")
            if not (shared.is_file() and same_shape(shared, model.llm.peft_config[name])):
                log.info("%s: no saved adapter %r; it starts as built", directory, name)
                continue
            path = directory
        model.llm.load_adapter(path, adapter_name=name, torch_device=str(model.device))
    for n, p in model.llm.named_parameters():
        if "lora_" in n:
            p.requires_grad_(trainable)


def load_weights(
    model: OneLLM,
    directory: str | os.PathLike,
    *,
    trainable_lora: bool = False,
    overrides: Sequence[str] = (),
) -> None:
    """Load the weights `save_pretrained` wrote to `directory` into `model`, built from its
    `saved_config`: its LoRA adapters (trainable if asked) and every part that is not a
    base model. With `overrides` (a changed config: another projection kind, a `moai`
    section) they load wherever they still fit by name and shape, the parts the change made
    stay as built, and what was left out is logged."""
    d = Path(directory)
    if (d / "lora").is_dir() and has_lora(model.llm):  # adapters the config built (llm_experts)
        load_adapters(model, d / "lora", trainable=trainable_lora, changed=bool(overrides))
    elif (d / "lora" / "adapter_config.json").is_file():
        model.llm = PeftModel.from_pretrained(model.llm, d / "lora", is_trainable=trainable_lora)
    elif (d / "lora").is_dir():  # per-modality experts, into a model built without them
        if not overrides:
            raise CheckpointError(f"{d / 'lora'}: expected one LoRA adapter, got several")
        log.info("%s with %s: its LLM experts are left out", d, list(overrides))
    own = _renamed(read_safetensors(d / "model.safetensors", device=str(model.device)))
    expected = own_state_dict(model)
    if overrides:  # a changed model: what still fits loads
        fits = {k: v for k, v in own.items() if k in expected and expected[k].shape == v.shape}
        fresh, dropped = sorted(set(expected) - set(fits)), sorted(set(own) - set(fits))
        log.info(
            "%s with %s: %d tensors start as built (%s ...), %d saved ones left out (%s ...)",
            d,
            list(overrides),
            len(fresh),
            fresh[:3],
            len(dropped),
            dropped[:3],
        )
        own = fits
    missing, unexpected = sorted(set(expected) - set(own)), sorted(set(own) - set(expected))
    if (missing and not overrides) or unexpected:
        raise CheckpointError(
            f"{d}: weights do not fit the config; missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict(own, strict=False)
