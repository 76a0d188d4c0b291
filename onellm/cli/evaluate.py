"""`onellm eval RUN`: held-out captioning, question answering (`--task qa`) or a task's own
metric (`--task seg`, ...); and `onellm conformance`, a comparison with the official
OneLLM reference's outputs.

By default the shapes world's held-out scenes are the ones the stage that saved RUN drew
for its own evaluation (its seed + 1, its `eval.samples` and `eval.max_new_tokens`, read
from the stage.yaml beside RUN), so `onellm eval` on a stage's final model prints the
figures of that stage's final table; `--seed` and `--samples` draw another set; `--data`
reads a JSONL manifest instead (every reference of a record: its `captions`). Captions are
scored as COCO scores them (onellm/evaluation/captions.py: PTB tokenizer and METEOR where
Java runs). Each task writes its own file: RUN/eval_caption.json, RUN/eval_qa.json,
RUN/eval_<task>.json, with what was asked (prompt, max_new_tokens, the draw or the
manifest's lines and digest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onellm.checkpoints.conformance import compare, report
from onellm.cli.chat import load_model
from onellm.data.manifest import read_manifest
from onellm.errors import ConfigError, InputError
from onellm.evaluation.captions import CaptionScorer
from onellm.model import OneLLM
from onellm.registry import TASKS
from onellm.training.evaluate import evaluate, evaluate_outputs, evaluate_qa
from onellm.training.stage import EvalConfig, StageConfig

# BLEU-4 scores 4-word runs: a reference of L words has L - 3 of them, so under 8 words one
# wrong word removes most of a caption's (the demo's 5-word captions: BLEU-4 0.03 beside
# 99% exact match); there the table leaves it out and says why (the JSON keeps it)
BLEU_MIN_WORDS = 8


@dataclass
class Draw:
    """Which held-out shapes-world scenes `onellm eval` reads, and why those."""

    seed: int
    samples: int
    max_new_tokens: int
    source: str  # where seed and samples came from, for the printed line

    @classmethod
    def of(cls, args: argparse.Namespace) -> Draw:
        """The stage's own draw where RUN was saved by a stage (RUN/../stage.yaml), else the
        default stage's (seed 0 + 1); `--seed` / `--samples` replace either."""
        stage_file = Path(args.run).parent / "stage.yaml"  # a saved run's, not a YAML's
        saved = Path(args.run).is_dir() and stage_file.is_file()
        stage = (yaml.safe_load(stage_file.read_text()) if saved else None) or {}
        e = stage.get("eval") or {}
        seed = stage.get("seed", StageConfig.seed)
        if stage:
            source = f"the stage's own evaluation: its seed {seed} + 1, {stage_file}"
        else:
            source = f"no stage.yaml beside RUN: a default stage's, seed {seed} + 1"
        asked = [f"--{k} as asked" for k in ("seed", "samples") if getattr(args, k) is not None]
        return cls(
            seed=seed + 1 if args.seed is None else args.seed,
            samples=e.get("samples", EvalConfig.samples) if args.samples is None else args.samples,
            max_new_tokens=args.max_new_tokens
            or e.get("max_new_tokens", EvalConfig.max_new_tokens),
            source=", ".join(asked) if len(asked) == 2 else "; ".join([*asked, source]),
        )

    def line(self, data: str | None) -> str:
        if data is not None:
            return f"held-out set: {data}"
        return (
            f"held-out set: the shapes world's test split, seed {self.seed}, "
            f"{self.samples} scenes per modality ({self.source})"
        )


def eval_verb(args: argparse.Namespace) -> int:
    tasks = args.task or ["caption"]
    if "qa" in tasks and len(tasks) > 1:
        raise ConfigError("eval: --task qa goes alone (the output tasks report per task)")
    model = load_model(args.run, device=args.device).eval()
    draw = Draw.of(args)
    if tasks == ["caption"] or tasks == ["qa"]:
        mods = modalities(model, args, questions=tasks == ["qa"])
    print(draw.line(args.data))
    if tasks == ["qa"]:
        results = qa_report(model, mods, args, draw)
        return write({"qa": results}, results, args)
    if tasks == ["caption"]:
        results = caption_report(model, mods, args, draw)
        return write({"caption": results}, results, args)
    results = {
        t: evaluate_outputs(model, t, samples=draw.samples, seed=draw.seed) | drawn(draw, None)
        for t in tasks
    }
    for t, r in results.items():
        got = "  ".join(f"{k} {r[k]:.3f}" for k in TASKS.get(t).metrics if k in r)
        print(f"{t:<4} n={r['n']:<4} {got}")
    return write(results, results, args)


def modalities(model: OneLLM, args: argparse.Namespace, *, questions: bool) -> list[str]:
    """--modality as given, else every modality of the model; with --data, those of its
    records that have captions (for --task qa: conversations), each checked to have some."""
    if args.data is None:
        return args.modality or sorted(model.modalities)
    what = "conversations" if questions else "a caption"
    records = [r for r in read_manifest(args.data) if not r.more]
    found = sorted(
        {model.modality_key(r.modality) for r in records if (r.turns if questions else r.caption)}
    )
    if not found:
        raise InputError(f"--data: expected records with {what}, got none in {args.data}")
    for m in args.modality or []:
        if model.modality_key(m) not in found:
            raise InputError(
                f"--modality {m}: {args.data} has no record of it with {what} "
                f"(it has: {', '.join(found)})"
            )
    return args.modality or found


def caption_report(model: OneLLM, mods: list[str], args: argparse.Namespace, draw: Draw) -> dict:
    """Held-out captions per modality, scored as COCO scores them: BLEU-4 (where captions
    are long enough for it), METEOR (where Java runs), ROUGE-L, CIDEr; and exact match."""
    tokenizer = "simple" if args.simple_tokenizer else "auto"
    with CaptionScorer(tokenizer=tokenizer, meteor=not args.no_meteor) as scorer:
        results = {
            m: evaluate(
                model,
                m,
                samples=draw.samples,
                data=args.data,
                seed=draw.seed,
                max_new_tokens=draw.max_new_tokens,
                prompt=args.prompt,
                scorer=scorer,
                keep=True,
            )
            | drawn(draw, args.data)
            for m in mods
        }
    print_captions(results)
    return results


def print_captions(results: dict[str, dict[str, Any]]) -> None:
    """The caption table, then how it was scored and why a column shows '-'."""
    heads = ("refs", "exact", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    print(f"{'modality':<9} {'n':>5} " + " ".join(f"{h:>7}" for h in heads))
    short = []
    for m, r in results.items():
        words = r.get("ref_words", BLEU_MIN_WORDS)
        short += [words] if words < BLEU_MIN_WORDS else []
        bleu = r["bleu4"] if words >= BLEU_MIN_WORDS else None
        row = [f"{r['references']:>7.1f}", f"{100 * r['exact_match']:>6.1f}%"]
        row += [
            f"{v:>7.3f}" if v is not None else f"{'-':>7}"
            for v in (bleu, r.get("meteor"), r["rouge_l"], r["cider"])
        ]
        print(f"{m:<9} {r['n']:>5} " + " ".join(row))
    last = list(results.values())[-1]  # one scorer: its reasons hold for every row
    skipped = last["skipped"]
    tokens = (
        "PTB tokenizer (Java)"
        if last["tokenizer"] == "ptb"
        else f"simple tokenizer ({skipped.get('ptb', 'as asked')})"
    )
    print(f"scored as COCO scores captions: {tokens}, every reference; {last['scorer']}")
    if "meteor" in skipped:
        print(f"METEOR (-): {skipped['meteor']}")
    if short:
        lo, hi = f"{min(short):.0f}", f"{max(short):.0f}"
        print(
            f"BLEU-4 (-) left out: these references average {lo if lo == hi else lo + '-' + hi} "
            f"words, under the {BLEU_MIN_WORDS} it needs (it counts 4-word runs; a 5-word "
            "caption has two, so one wrong word zeroes it); read exact match and CIDEr. The "
            "JSON keeps it."
        )


def drawn(draw: Draw, data: str | None) -> dict[str, Any]:
    """What a result was measured on, saved beside it: the draw, or the manifest and its
    digest (the lines read are in the result: `lines`)."""
    if data:
        return {"data": data, "data_sha256": hashlib.sha256(Path(data).read_bytes()).hexdigest()}
    return {"seed": draw.seed, "samples": draw.samples}


def qa_report(model: OneLLM, mods: list[str], args: argparse.Namespace, draw: Draw) -> dict:
    """`onellm eval RUN --task qa`: held-out question answering per modality and question."""
    results = {}
    for m in mods:
        try:
            asked = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
            results[m] = evaluate_qa(
                model, m, samples=draw.samples, seed=draw.seed, data=args.data, **asked
            ) | drawn(draw, args.data)
        except InputError as e:
            if args.modality:  # asked for by name: say why not
                raise
            print(f"{m:<9} skipped: {e}")  # e.g. a plug-in without questions in its scenes
    print(f"{'modality':<9} {'n':>5} {'QA':>7}   by question")
    for m, r in results.items():
        by = "  ".join(f"{q} {v['correct']}/{v['n']}" for q, v in r["by_question"].items())
        print(f"{m:<9} {r['n']:>5} {100 * r['qa_accuracy']:>6.1f}%   {by}")
    return results


def write(by_task: dict[str, Any], results: dict[str, Any], args: argparse.Namespace) -> int:
    """`results` as JSON to `--json`; else each task's (`by_task`) into a saved run's folder
    (RUN/eval_caption.json, RUN/eval_qa.json, RUN/eval_seg.json, ...), so that one task's
    evaluation never overwrites another's."""
    run = Path(args.run)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    elif run.is_dir():
        for task, r in by_task.items():
            out = run / f"eval_{task}.json"
            out.write_text(json.dumps(r, indent=1))
            print(f"wrote {out}")
    return 0


def conformance_verb(args: argparse.Namespace) -> int:
    errors = compare(args.fixture)
    print(report(errors, args.tol))
    return 0 if all(e <= args.tol for e in errors.values()) else 1
