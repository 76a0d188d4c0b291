"""`onellm eval RUN`: held-out captioning, question answering (`--task qa`) or a task's own
metric (`--task seg`, ...); and `onellm conformance`, a comparison with the official
OneLLM reference's outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onellm.checkpoints.conformance import compare, report
from onellm.cli.chat import load_model
from onellm.errors import ConfigError, InputError
from onellm.model import OneLLM
from onellm.registry import TASKS
from onellm.training.evaluate import evaluate, evaluate_outputs, evaluate_qa


def eval_verb(args: argparse.Namespace) -> int:
    model = load_model(args.run, device=args.device).eval()
    mods = args.modality or sorted(model.modalities)
    if args.task and "qa" in args.task:
        if len(args.task) > 1:
            raise ConfigError("eval: --task qa goes alone (the output tasks report per task)")
        return write(qa_report(model, mods, args), args)
    if args.task:
        results = {
            t: evaluate_outputs(model, t, samples=args.samples, seed=args.seed) for t in args.task
        }
        for t, r in results.items():
            got = "  ".join(f"{k} {r[k]:.3f}" for k in TASKS.get(t).metrics if k in r)
            print(f"{t:<4} n={r['n']:<4} {got}")
        return write(results, args)
    results = {
        m: evaluate(model, m, samples=args.samples, data=args.data, seed=args.seed) for m in mods
    }
    print(f"{'modality':<9} {'n':>5} {'exact':>7} {'BLEU-4':>7} {'CIDEr':>7}")
    for m, r in results.items():
        exact = f"{100 * r['exact_match']:>6.1f}%"
        print(f"{m:<9} {r['n']:>5} {exact} {r['bleu4']:>7.3f} {r['cider']:>7.3f}")
    return write(results, args)


def qa_report(model: OneLLM, mods: list[str], args: argparse.Namespace) -> dict:
    """`onellm eval RUN --task qa`: held-out question answering per modality and question."""
    results = {}
    for m in mods:
        try:
            results[m] = evaluate_qa(model, m, samples=args.samples, seed=args.seed, data=args.data)
        except InputError as e:
            if args.modality:  # asked for by name: say why not
                raise
            print(f"{m:<9} skipped: {e}")  # e.g. a plug-in without questions in its scenes
    print(f"{'modality':<9} {'n':>5} {'QA':>7}   by question")
    for m, r in results.items():
        by = "  ".join(f"{q} {v['correct']}/{v['n']}" for q, v in r["by_question"].items())
        print(f"{m:<9} {r['n']:>5} {100 * r['qa_accuracy']:>6.1f}%   {by}")
    return results


def write(results: dict, args: argparse.Namespace) -> int:
    """The results as JSON: to `--json`, else into a saved run's folder (RUN/eval.json)."""
    run = Path(args.run)
    out = Path(args.json) if args.json else (run / "eval.json" if run.is_dir() else None)
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    return 0


def conformance_verb(args: argparse.Namespace) -> int:
    errors = compare(args.fixture)
    print(report(errors, args.tol))
    return 0 if all(e <= args.tol for e in errors.values()) else 1
