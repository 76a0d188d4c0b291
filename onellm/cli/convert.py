"""`onellm convert CHECKPOINT OUT`: an official OneLLM checkpoint (csuhan/OneLLM's `.pth`, or
the same keys as `.safetensors`) written once as a saved run, which `OneLLM.from_pretrained`
and every verb then load lazily from safetensors.

The checkpoint is memory-mapped and the model built with its parameters on the meta device,
then given the checkpoint's tensors (onellm/checkpoints/convert.py), so peak memory stays
near the checkpoint's own size: a 15 GB OneLLM-7B converts on a 24 GB machine.

`onellm export RUN OUT --keys GLOB...`: some of a saved run's weights as one safetensors
file, which a stage's `load_weights:` loads (onellm/checkpoints/weights.py).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from onellm.checkpoints.convert import from_onellm
from onellm.checkpoints.weights import export_weights, sha256
from onellm.model import OneLLM


def convert_verb(args: argparse.Namespace) -> int:
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


def export_verb(args: argparse.Namespace) -> int:
    """`onellm export RUN OUT --keys GLOB...`: the run's tensors that match as one file."""
    out, names = export_weights(OneLLM.from_pretrained(args.run), args.keys, args.out)
    print(f"onellm export: {len(names)} tensors of {args.run} -> {out} (sha256 {sha256(out)})")
    return 0
