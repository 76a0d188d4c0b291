"""Compare this library with a OneLLM reference fixture (weights, inputs, outputs, config.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from onellm.checkpoints.convert import MODALITY_NAMES, from_onellm
from onellm.errors import InputError


def onellm_logits(
    model, tokens: torch.Tensor, x: torch.Tensor | None = None, modality: str | None = None
) -> torch.Tensor:
    """Logits (B, L, V) aligned as OneLLM's forward returns them for token rows `tokens`
    (B, L) and, optionally, a batch `x` of `modality`. The rows are laid out by the one
    layout path (the block right after BOS); with a modality, row 0 is the end-tag
    position and rows 1.. are text tokens 1..: BOS, the start tag and the modality tokens
    get no logits, as in OneLLM."""
    given = [model.modality_key(modality)] if modality is not None else []
    if (x is None) != (modality is None):
        raise InputError("input and modality go together: got one without the other")
    ids, _ = model.layout.widen(tokens, given)
    inputs = {given[0]: x} if given else None
    out = model(ids, inputs=inputs, use_cache=False)
    return out.logits[:, model.layout.block_len if given else 0 :]


@torch.no_grad()
def compare(fixture: str | os.PathLike) -> dict[str, float]:
    """Max abs difference for every `encode.*` and `logits.*` output of the fixture."""
    d = Path(fixture)
    meta = json.loads((d / "config.json").read_text())
    model = from_onellm(
        d / "weights.safetensors",
        llm_heads=meta["llm"]["n_heads"],
        encoder_heads=meta["clip_vision"]["heads"],
        expert_heads=meta["upm"]["n_heads"],
    ).eval()
    inputs, outputs = load_file(d / "inputs.safetensors"), load_file(d / "outputs.safetensors")
    errors = {"logits.text": _err(onellm_logits(model, inputs["tokens"]), outputs["logits.text"])}
    for ref in meta["modalities_with_outputs"]:
        x = inputs[ref]
        errors[f"encode.{ref}"] = _err(model.encode(x, ref), outputs[f"encode.{ref}"])
        errors[f"logits.{ref}"] = _err(
            onellm_logits(model, inputs["tokens"], x, ref), outputs[f"logits.{ref}"]
        )
    return errors


def _err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        return float("inf")
    return (ours.float() - ref.float()).abs().max().item()


def report(errors: dict[str, float], tol: float = 1e-4) -> str:
    lines = [f"{'output':<18} {'max abs':>10}  (tolerance {tol:g})"]
    for name, e in errors.items():
        ours = MODALITY_NAMES.get(name.split(".")[1], "")
        lines.append(
            f"{name:<18} {e:>10.2e}  {'ok' if e <= tol else 'FAIL'}"
            + (f"  ({ours})" if ours else "")
        )
    return "\n".join(lines)
