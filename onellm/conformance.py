"""Compare this library with a OneLLM reference fixture (weights, inputs, outputs, config.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from onellm.convert import MODALITY_NAMES, from_onellm


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
    errors = {"logits.text": _err(model.logits(inputs["tokens"]), outputs["logits.text"])}
    for ref in meta["modalities_with_outputs"]:
        x = inputs[ref]
        errors[f"encode.{ref}"] = _err(model.encode(x, ref), outputs[f"encode.{ref}"])
        errors[f"logits.{ref}"] = _err(
            model.logits(inputs["tokens"], x, ref), outputs[f"logits.{ref}"]
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
