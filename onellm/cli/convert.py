"""`onellm convert CHECKPOINT OUT`: an official OneLLM checkpoint (csuhan/OneLLM's `.pth`, or
the same keys as `.safetensors`) written once as a saved run, which `OneLLM.from_pretrained`
and every verb then load lazily from safetensors.

The checkpoint is memory-mapped and the model built with its parameters on the meta device,
then given the checkpoint's tensors (onellm/checkpoints/convert.py), so peak memory stays
near the checkpoint's own size: a 15 GB OneLLM-7B converts on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from onellm.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")


def add_convert_verb(sub) -> None:
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
    p.set_defaults(func=convert_verb)


def check_convert(args: argparse.Namespace) -> None:
    """Before torch loads: the checkpoint is a file, OUT is not a file or a non-empty folder."""
    if not Path(args.checkpoint).is_file():
        raise InputError(f"convert: expected a checkpoint file, got {args.checkpoint!r}")
    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise InputError(f"convert: expected a new or empty folder for OUT, got {args.out!r}")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise InputError(f"convert: --tokenizer: expected a folder, got {args.tokenizer!r}")


def convert_verb(args: argparse.Namespace) -> int:
    from onellm.checkpoints.convert import from_onellm  # torch loads with the verb

    start = time.perf_counter()
    model = from_onellm(
        args.checkpoint,
        llm_heads=args.llm_heads,
        encoder_heads=args.encoder_heads,
        expert_heads=args.expert_heads,
        dtype=args.dtype,
        tokenizer=args.tokenizer,
    )
    out = model.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        f"onellm convert: {args.checkpoint} -> {out} ({size / 2**30:.2f} GiB, "
        f"{', '.join(sorted(model.modalities))}) in {time.perf_counter() - start:.0f} s, "
        f"peak memory {peak:.1f} GiB\n"
        f"load it with OneLLM.from_pretrained({str(out)!r}) or `onellm chat {out} ...`"
    )
    return 0
