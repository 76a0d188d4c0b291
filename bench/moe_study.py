"""The MoE study (docs/moe.md): stage 2 from the demo's stage 1 with its experts upcycled to
4 under top-2 routing, (a) without balance, (b) balanced per micro-batch, (c) balanced over
the whole step, and OneLLM's soft routing over the same 4 experts as the reference; (b)
and (c) again with a step of 8 micro-batches of 4 instead of 4 of 8.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.moe_study [--root runs/moe] [--steps 1000]

(one thread: on 2 cores shared with another training process, torch's two threads each
ran a step 5-20x slower than one). Runs the demo's stages 0 and 1 into ROOT unless
ROOT/stage1/final exists, then each variant of configs/stages/moe_stage2_top2.yaml not yet
run (`--retrain`: all), same seed and steps, and prints the tables: held-out caption
accuracy; each modality's share of the routing weight per expert, the experts it spreads
over and its router entropy (the final model at inference on 64 held-out scenes); all
modalities' share per expert over the last 100 steps; the collapse alarms; the wall time.
Writes ROOT/moe_study.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

STAGES = Path(__file__).resolve().parents[1] / "configs" / "stages"
VARIANTS = {  # name -> overrides of moe_stage2_top2.yaml
    "soft": ["upcycle.router={type: soft}", "moe.balance=0", "moe.z_loss=0"],  # OneLLM's
    "none": ["moe.balance=0"],
    "micro": ["moe.scope=micro_batch"],
    "global": [],
    # the same 32 examples a step as 8 micro-batches of 4: a step holds more of the modalities
    "micro-8x4": ["moe.scope=micro_batch", "batch_size=4", "grad_accum=8"],
    "global-8x4": ["batch_size=4", "grad_accum=8"],
}
MODALITIES = ("image", "video", "audio", "point")


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def train_stage(path: Path, overrides: list[str]) -> float:
    """Train one stage; -> its wall seconds."""
    from onellm.training.recipe import train
    from onellm.training.stage import load_stage

    t = time.perf_counter()
    train(load_stage(path, overrides), quiet=False)
    return time.perf_counter() - t


def routing_at_inference(run: Path) -> dict[str, dict]:
    """The final model's routing on 64 held-out scenes per modality (routing_report)."""
    from onellm import OneLLM
    from onellm.data import shapes

    model = OneLLM.from_pretrained(run / "final").eval()
    out = {}
    for m in MODALITIES:
        x = torch.cat(
            [
                model.preprocess(s.input, m)
                for s in shapes.sample(m, 64, split="test", seed=7, model=model)
            ]
        )
        report = model.routing_report(m, x)
        out[m] = {"load": report["load"], "entropy": report["entropy"]}
    return out


def variant(root: Path, name: str, steps: int, retrain: bool) -> dict:
    """Train variant `name` (unless it has run: its row is kept in its run folder)."""
    from onellm.cli.demo import final_accuracy
    from onellm.training.recipe import read_metrics

    run = root / f"stage2-{name}"
    if (run / "study_row.json").is_file() and not retrain:
        return json.loads((run / "study_row.json").read_text())
    overrides = [f"vars.root={root}", f"vars.variant={name}", f"steps={steps}", *VARIANTS[name]]
    load = os.getloadavg()[0]
    seconds = train_stage(STAGES / "moe_stage2_top2.yaml", overrides)
    records = read_metrics(run)
    alarms = [r for r in records if r["event"] == "warning"]
    last = [r for r in records if r["event"] == "train"][-5:]  # the last 100 steps at log 20
    share = [sum(r["expert_share"][e] or 0.0 for r in last) / len(last) for e in range(4)]
    row = {
        "variant": name,
        "overrides": overrides,
        "seconds": seconds,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "accuracy": final_accuracy(run),
        "routing": routing_at_inference(run),
        "share": share,
        "alarms": len(alarms),
        "first_alarm": alarms[0]["step"] if alarms else None,
    }
    (run / "study_row.json").write_text(json.dumps(row, indent=1))
    return row


def used(load: list[float]) -> float:
    """The experts a load spreads over: exp(entropy) (1: one expert, K: all evenly)."""
    return math.exp(-sum(p * math.log(p) for p in load if p > 0))


def tables(rows: list[dict]) -> str:
    """The study's two tables in Markdown."""
    lines = [
        "| variant | " + " | ".join(MODALITIES) + " | router entropy | experts per modality "
        "| all modalities' share per expert | alarms | wall |",
        "|" + "---|" * (len(MODALITIES) + 6),
    ]
    for r in rows:
        acc = " | ".join(f"{100 * r['accuracy'].get(m, float('nan')):.0f}%" for m in MODALITIES)
        ent = sum(r["routing"][m]["entropy"] for m in MODALITIES) / len(MODALITIES)
        per = sum(used(r["routing"][m]["load"]) for m in MODALITIES) / len(MODALITIES)
        share = " / ".join(f"{100 * s:.0f}" for s in r["share"])
        lines.append(
            f"| {r['variant']} | {acc} | {ent:.2f} | {per:.2f} | {share} | "
            f"{r['alarms']} | {r['seconds']:.0f} s |"
        )
    lines += [
        "",
        "| variant | modality | expert 0 | expert 1 | expert 2 | expert 3 | experts | entropy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for m in MODALITIES:
            u = r["routing"][m]
            shares = " | ".join(f"{100 * s:.0f}%" for s in u["load"])
            lines.append(
                f"| {r['variant']} | {m} | {shares} | {used(u['load']):.2f} | {u['entropy']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/moe")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--retrain", action="store_true", help="train variants that have run again")
    args = ap.parse_args()
    root = Path(args.root)
    if not (root / "stage1" / "final").is_dir():
        for stage in ("stage0_pretrain", "stage1_image"):
            train_stage(STAGES / f"{stage}.yaml", [f"vars.root={root}"])
    rows = [variant(root, name, args.steps, args.retrain) for name in args.variants]
    report = {"machine": machine(), "steps": args.steps, "rows": rows}
    (root / "moe_study.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['machine']}\n\n{tables(rows)}")


if __name__ == "__main__":
    main()
