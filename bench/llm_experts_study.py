"""The LLM-experts study (docs/moe.md, issue 35): the demo's stage 4 (instruction tuning,
configs/stages/stage4_instruct.yaml, from the demo's stage 3) with three variants as config
overrides, the same seed, data and steps:

    shared LoRA         the stage as it is: one LoRA (r 8) on q/k/v/o that every modality shares
    per-modality LoRA   llm_experts: {kind: lora_per_modality}: a LoRA per modality and one
                        for text, each position its modality's (experts/llm/lora.py)
    MoE layers          llm_experts: {kind: moe_layers, layers: [1, 3], experts: 4, k: 2}:
                        layers 1 and 3's MLPs upcycled (MoE-LLaVA's recipe), trained alone
                        (no LoRA, as MoE-LLaVA's stage 3 trains its MoE layers), balance 0.01;
                        again with a gate per modality, and at a tenth of the stage's rate

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.llm_experts_study \
        [--init runs/demo/stage3/final] [--root runs/llm_experts_study] [--steps 240]
        [--only VARIANT ...] [--seed N] [--timing]

`--timing`: instead, each variant's step time in one process, the variants taking turns on
the same batches (the machine is shared: separate runs meet different loads).

Per variant: held-out captions and QA per modality after the stage (the stage's own
report.json) and the caption change against the stage-3 model; the stage-0 text ability
as the held-out LM loss (nats per token) on the shapes world's text (test-split captions
and conversations, every token a target, no modality input: stage 0's `lm` rows); the
trainable parameters; the step time; each MoE layer's load per modality. Prints the
tables and writes ROOT/results.json. A variant whose ROOT/<name>/final exists is read,
not trained again (`--retrain`: all).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from bench.moe_study import machine
from onellm import OneLLM
from onellm.data import shapes
from onellm.modeling.layout import pad
from onellm.modeling.template import render_training
from onellm.training.recipe import Recipe, train
from onellm.training.stage import load_stage

STAGE4 = Path(__file__).resolve().parents[1] / "configs" / "stages" / "stage4_instruct.yaml"
MOE = "{kind: moe_layers, layers: [1, 3], experts: 4, k: 2}"
VARIANTS = {  # name -> overrides of stage4_instruct.yaml
    "shared-lora": [],
    "lora-per-modality": ["model_overrides=['llm_experts={kind: lora_per_modality}']"],
    "moe-layers": [
        f"model_overrides=['llm_experts={MOE}']",
        "lora=null",
        "trainable=['llm_experts.*']",
        "moe={balance: 0.01}",
    ],
    # two more, to read the third: a gate per modality (Ming-Omni), and a 10x smaller step
    # for the experts (full MLP weights at LoRA's rate)
    "moe-per-modality": [
        f"model_overrides=['llm_experts={MOE[:-1]}, router: per_modality}}']",
        "lora=null",
        "trainable=['llm_experts.*']",
        "moe={balance: 0.01}",
    ],
    "moe-lr-1e-4": [
        f"model_overrides=['llm_experts={MOE}']",
        "lora=null",
        "trainable=['llm_experts.*']",
        "moe={balance: 0.01}",
        "optimizer.lr=1.0e-4",
    ],
}
MODALITIES = ("image", "video", "audio", "point", "depth", "normal", "imu", "fmri")


@torch.no_grad()
def text_loss(run: Path, scenes: int = 40) -> float:
    """Held-out LM loss (nats per target token) on the shapes world's text: each modality's
    first `scenes` test-split scenes, read as the caption and as a conversation about it,
    every token a target and no modality input (as stage 0's `lm` task reads them)."""
    model = OneLLM.from_pretrained(run).eval()
    chat, rows = model.config.chat, []
    for m in MODALITIES:
        for s in shapes.sample(m, scenes, split="test", seed=11, model=model):
            for segs in (
                render_training(chat, None, s.caption),
                render_training(chat, [("What is this?", s.caption), *s.qa]),
            ):
                rows.append(model.layout.row([(t, True) for t, _ in segs], [], eos=True))
    total, count = 0.0, 0
    for i in range(0, len(rows), 32):
        b = pad(rows[i : i + 32], model.text_tokenizer.pad_token_id or 0)
        logits = model(b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="sum"
        )
        total, count = total + float(nll), count + int((labels != -100).sum())
    return total / count


def read_run(run: Path) -> dict:
    """The figures a finished stage wrote: report.json's rows, metrics.jsonl's start and
    train records (trainable parameters, step times, the LLM layers' expert use)."""
    report = json.loads((run / "report.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    start = next(r for r in records if r["event"] == "start")
    train = [r for r in records if r["event"] == "train"]
    rows = {(r["modality"], r["label"].rsplit(" ", 1)[-1]): r for r in report["rows"]}
    return {
        "trainable_params": start["trainable_params"],
        "captions": {m: rows[(m, "captions")]["accuracy"] for m in MODALITIES},
        "captions_parent": {m: rows[(m, "captions")]["parent"] for m in MODALITIES},
        "qa": {m: rows[(m, "questions")]["accuracy"] for m in MODALITIES},
        "examples_per_s": [r["samples_per_s"] for r in train],
        # the training loop's seconds (evaluation and saving left out): each logged
        # window's steps x the stage's 16 examples over its examples per second
        "train_s": sum(
            (r["step"] - before) * 16 / r["samples_per_s"]
            for r, before in zip(train, [0] + [r["step"] for r in train], strict=False)
        ),
        "llm_load": layer_loads(train),
        "alarms": [
            r["step"]
            for r in train
            if any(u.get("collapse") for u in (r.get("llm_routing") or {}).values())
        ],
    }


def layer_loads(train: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Each MoE layer's load per modality over the whole stage (windows weighted by their
    positions): {layer: {modality: [share per expert]}}."""
    sums: dict[str, dict[str, list[float]]] = {}
    for r in train:
        for layer, use in (r.get("llm_routing") or {}).items():
            for m, u in use["routing"].items():
                acc = sums.setdefault(layer, {}).setdefault(m, [0.0] * (len(u["load"]) + 1))
                for e, share in enumerate(u["load"]):
                    acc[e] += u["tokens"] * share
                acc[-1] += u["tokens"]
    return {
        layer: {m: [v / acc[-1] for v in acc[:-1]] for m, acc in per.items()}
        for layer, per in sums.items()
    }


def spread(load: list[float]) -> float:
    """The experts a load spreads over: exp of its entropy (1: one expert, K: all evenly)."""
    return math.exp(-sum(p * math.log(p) for p in load if p > 0))


def run_variant(name: str, overrides: list[str], args) -> dict:
    out_dir = Path(args.root) / name
    wall = None
    if args.retrain or not (out_dir / "final").is_dir():
        base = [f"init_from={args.init}", f"output_dir={out_dir}", f"steps={args.steps}"]
        base += [f"seed={args.seed}"] * (args.seed is not None)  # default: the stage's
        cfg = load_stage(STAGE4, base + overrides)
        t = time.perf_counter()
        train(cfg, quiet=True)
        wall = time.perf_counter() - t
    got = read_run(out_dir)
    got |= {"overrides": overrides, "wall_s": wall, "text_loss": text_loss(out_dir / "final")}
    return got


def table(results: dict, parent_text: float, batch: int) -> str:
    head = ["variant", "trainable", "s/step", "train s", *(f"{m[:5]} cap/QA" for m in MODALITIES)]
    lines = ["| " + " | ".join(head + ["cap. change (mean, worst)", "text loss (change)"]) + " |"]
    lines.append("|" + "---|" * (len(head) + 2))
    for name, r in results.items():
        rates = sorted(r["examples_per_s"])
        step = batch / rates[len(rates) // 2]  # the median window's
        drop = [r["captions"][m] - r["captions_parent"][m] for m in MODALITIES]
        cells = [
            name,
            f"{r['trainable_params']:,}",
            f"{step:.3f}",
            f"{r['train_s']:.0f}",
            *(f"{100 * r['captions'][m]:.0f} / {100 * r['qa'][m]:.0f}" for m in MODALITIES),
            f"{100 * sum(drop) / len(drop):+.1f} / {100 * min(drop):+.0f}",
            f"{r['text_loss']:.3f} ({r['text_loss'] - parent_text:+.3f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_table(results: dict) -> str:
    lines = [
        "| variant | layer | modality | expert 0 / 1 / 2 / 3 | experts |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if r["llm_load"]:
            lines.append(f"| {name} | collapse alarms | {len(r['alarms'])} | | |")
        for layer, per in r["llm_load"].items():
            for m, load in per.items():
                shares = " / ".join(f"{100 * s:.0f}" for s in load)
                lines.append(f"| {name} | {layer} | {m} | {shares} | {spread(load):.2f} |")
    return "\n".join(lines)


def step_times(args, variants: list[str], steps: int = 10, rounds: int = 3) -> dict[str, float]:
    """Each variant's seconds per optimiser step, timed in one process on the same
    prepared batches, the variants taking turns (`rounds` of `steps` steps each), so that
    the machine's load weighs on each alike: {variant: the median step}."""
    recipes = {}
    for name in variants:
        out = Path(args.root) / "timing" / name
        over = [f"init_from={args.init}", f"output_dir={out}", "eval.modalities=[]"]
        recipes[name] = Recipe(load_stage(STAGE4, over + VARIANTS[name]), quiet=True).setup()
    batches = [recipes[variants[0]].data[s] for s in range(steps)]  # the same seed and data
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, recipe in recipes.items():
            for s, prepared in enumerate(batches):
                t = time.perf_counter()
                recipe.train_step(s, prepared)
                times[name].append(time.perf_counter() - t)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default="runs/demo/stage3/final")
    ap.add_argument("--root", default="runs/llm_experts_study")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=None, help="another seed (default: the stage's)")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--timing", action="store_true", help="only time the variants' steps")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.timing:
        load = os.getloadavg()[0]
        times = step_times(args, args.only)
        print(f"{machine()}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        for name, t in times.items():
            print(f"{name}: {t:.3f} s/step (median of 3 x 10 steps, taking turns)")
        (root / "timing.json").write_text(json.dumps({"machine": machine(), **times}, indent=1))
        return
    parent_text = text_loss(Path(args.init))
    results = {}
    for name in args.only:
        t = time.perf_counter()
        results[name] = run_variant(name, VARIANTS[name], args)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    batch = 16  # stage 4's examples a step
    text = table(results, parent_text, batch)
    loads = load_table(results)
    print(
        f"\n{machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"stage 3 (parent) text loss {parent_text:.3f} nats/token; {args.steps} steps\n")
    print(text, "\n\n", loads, sep="")
    summary = {
        "machine": machine(),
        "steps": args.steps,
        "init": args.init,
        "parent_text_loss": parent_text,
        "variants": results,
        "table": text,
        "load_table": loads,
    }
    (root / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
