"""Packed against padded micro-batches on the demo's data: the same stage, the same steps,
step time and padding share, interleaved in one process.

    .venv/bin/python -m bench.packing [--config bench/configs/small.yaml] [--steps 6]

For each source kind (stage 1's image captions; instruction tuning's conversations, which
group by length; stage 0's language modelling) a Recipe with `packing: true` and one with
`packing: false` on the same starting weights, trainable as the stage says, run step s of
the stage in turn (order flipped each step). Prints one JSON line per source kind: median ms
a step each, their ratio, and each one's share of LLM positions that are padding.

    .venv/bin/python -m bench.packing --attention [--config ...]   # SDPA against flex_attention
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.real_scale import Workload
from onellm import OneLLM
from onellm.training.efficiency import batch_figures
from onellm.training.freezing import set_trainable
from onellm.training.recipe import Recipe
from onellm.training.stage import load_stage

KINDS = {  # stage YAML, the data (a shapes-world source), what trains
    "caption": ("stage1_image", "{image: {task: caption}}", "[projection.*]"),
    "instruct": ("stage4_instruct", "{image: {task: instruct}}", "[llm.*lora_*]"),
    "lm": ("stage0_pretrain", "{text: {task: lm, context_mix: 0.5}}", "[llm.*]"),
}


def recipe(kind: str, config: str, packing: bool, batch: int, tmp: Path) -> Recipe:
    stage, data, trainable = KINDS[kind]
    cfg = load_stage(
        Path("configs/stages") / f"{stage}.yaml",
        [
            f"init_from={config}",
            f"output_dir={tmp / f'{kind}-{packing}'}",
            f"data={data}",
            f"trainable={trainable}",
            f"batch_size={batch}",
            "grad_accum=1",
            "replay=false",
            "eval.modalities=[]",
            f"packing={str(packing).lower()}",
        ],
    )
    return Recipe(cfg, quiet=True).setup()


def padding(r: Recipe, steps: int) -> float:
    figures = [batch_figures(b) for s in range(steps) for b in r.data[s][1]]
    return sum(f[1] for f in figures) / sum(f[0] for f in figures)


def attention_paths(config: str, batch: int, runs: int) -> dict:
    """Our packed stage-1 forward (cached features) with the LLM's attention as SDPA with
    transformers' materialised block-diagonal mask, then as flex_attention's block mask,
    alternated on one batch (flex compiles per shape: its first call is reported). Forward
    only: torch 2.14's FlexAttention has no backward on the CPU, so training there is SDPA."""

    torch.manual_seed(0)
    model = OneLLM.from_config(config).train()
    set_trainable(model, ["projection.*"])
    work = Workload(model, batch)
    idx = list(range(batch))

    def step(attn: str) -> float:
        model.llm.config._attn_implementation = attn
        t = time.perf_counter()
        with torch.no_grad():
            work.onellm(idx)
        return 1000 * (time.perf_counter() - t)

    first = {a: step(a) for a in ("sdpa", "flex_attention")}
    times: dict[str, list[float]] = {"sdpa": [], "flex_attention": []}
    for r in range(runs):
        for a in list(times) if r % 2 else list(times)[::-1]:
            times[a].append(step(a))
    ms = {a: statistics.median(v) for a, v in times.items()}
    return {
        "bench": "packing_attention",
        "config": config,
        "batch": batch,
        "row": list(work.packed(idx)["input_ids"].shape),
        "threads": torch.get_num_threads(),
        "first_call_ms": first,
        "forward_ms": ms,
        "flex_over_sdpa": ms["flex_attention"] / ms["sdpa"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/small.yaml")
    ap.add_argument("--kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--attention", action="store_true", help="SDPA against flex_attention")
    args = ap.parse_args()
    if args.attention:
        print(json.dumps(attention_paths(args.config, args.batch, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            runs = {p: recipe(kind, args.config, p, args.batch, Path(tmp)) for p in (True, False)}
            times: dict[bool, list[float]] = {True: [], False: []}
            for s in range(args.steps + 1):  # step 0 warms up
                for p in (True, False) if s % 2 else (False, True):
                    t = time.perf_counter()
                    runs[p].train_step(s)
                    if s:
                        times[p].append(1000 * (time.perf_counter() - t))
            ms = {p: statistics.median(v) for p, v in times.items()}
            row = {
                "bench": "packing",
                "config": args.config,
                "kind": kind,
                "batch": args.batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "packed_ms": ms[True],
                "padded_ms": ms[False],
                "speedup": ms[False] / ms[True],
                "packed_padding_share": padding(runs[True], args.steps),
                "padded_padding_share": padding(runs[False], args.steps),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
