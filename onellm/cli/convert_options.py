"""`onellm convert`'s options and checks (before torch loads); the verb: convert.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from onellm.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")


def add_convert_verb(sub, run: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "convert", help="write an official OneLLM checkpoint as a saved run (safetensors)"
    )
    p.add_argument("checkpoint", help="the official checkpoint: a .pth or .safetensors file")
    p.add_argument("out", help="the saved run's folder (created)")
    p.add_argument("--llm-heads", type=int, default=32, help="LLM attention heads (Llama-2-7B: 32)")
    p.add_argument("--encoder-heads", type=int, default=16, help="CLIP heads (ViT-L/14: 16)")
    p.add_argument(
        "--expert-heads", type=int, default=16, help="projection experts' heads (OneLLM: 16)"
    )
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the run's weights")
    p.add_argument("--tokenizer", help="the Llama-2 tokenizer dir to save with the run")
    p.set_defaults(func=run)


def check_convert(args: argparse.Namespace) -> None:
    """Before torch loads: the checkpoint is a file, OUT is not a file or a non-empty folder."""
    if not Path(args.checkpoint).is_file():
        raise InputError(f"convert: expected a checkpoint file, got {args.checkpoint!r}")
    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise InputError(f"convert: expected a new or empty folder for OUT, got {args.out!r}")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise InputError(f"convert: --tokenizer: expected a folder, got {args.tokenizer!r}")
