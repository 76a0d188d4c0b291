"""`onellm info` and `onellm chat`, and how every verb that takes RUN loads its model."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from onellm.cli.checks import chat_input
from onellm.config import is_config
from onellm.errors import ConfigError
from onellm.inference.interactive import session
from onellm.model import OneLLM
from onellm.modeling.devices import resolve_device


def load_model(
    run: str,
    overrides: Sequence[str] = (),
    device: str = "auto",
    quantization: str | None = None,
) -> OneLLM:
    """A saved run directory (`from_pretrained`) or a model YAML (`from_config`) on `device`,
    its LLM's weights quantised if asked (`8bit`, `4bit`)."""
    where = resolve_device(device)  # before anything loads: no CUDA is one clear line
    if is_config(run):
        return OneLLM.from_config(run, overrides, device=where, quantization=quantization)
    if overrides:
        raise ConfigError("key=value overrides apply to a YAML config, not a saved run")
    return OneLLM.from_pretrained(run, device=where, quantization=quantization)


def info_verb(args: argparse.Namespace) -> int:
    print(summary(load_model(args.run, args.overrides, args.device)))
    return 0


def chat_verb(args: argparse.Namespace) -> int:
    args.input = chat_input(args.input)
    model = load_model(args.run, device=args.device).eval()
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.prompt is None and not args.once:
        session(model, modality=args.modality, source=args.input, save_dir=args.save_dir, **opts)
        return 0
    modality = args.modality if args.input else None
    reply = model.chat(args.input, modality=modality, prompt=args.prompt or None, **opts)
    print(reply.text)
    stem = time.strftime("reply-%Y%m%d-%H%M%S")  # earlier replies' files stay
    for path in reply.save(args.save_dir, stem):  # masks and images, one file each
        print(f"saved {path}")
    return 0


def summary(model: OneLLM) -> str:
    """A table of the model's parts: parameters, trainable parameters, and each modality's input."""
    rows = [("part", "params", "trainable")]
    for name in ("tokenizers", "encoder", "projection", "llm"):
        part = getattr(model, name)
        total = sum(p.numel() for p in part.parameters())
        train = sum(p.numel() for p in part.parameters() if p.requires_grad)
        rows.append((name, f"{total:,}", f"{train:,}"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, width, strict=True))
        )
        for r in rows
    ]
    lines.append("")
    lines.append("modality  input (per sample)")
    for key, mod in model.modalities.items():
        shape = ", ".join("T" if s is None else str(s) for s in mod.input_shape())
        lines.append(f"{key:<9} ({shape})")
    return "\n".join(lines)
