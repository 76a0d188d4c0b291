"""The `onellm` command line: one subcommand per job, each a thin call into the library."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from onellm.config import is_config
from onellm.errors import ConfigError, OneLLMError


def load_model(run: str, overrides: Sequence[str] = (), device: str = "auto"):
    """A saved run directory (`from_pretrained`) or a model YAML (`from_config`) on `device`."""
    from onellm.model import OneLLM
    from onellm.modeling.devices import resolve_device

    where = resolve_device(device)  # before anything loads: no CUDA is one clear line
    if is_config(run):
        return OneLLM.from_config(run, overrides, device=where)
    if overrides:
        raise ConfigError("key=value overrides apply to a YAML config, not a saved run")
    return OneLLM.from_pretrained(run, device=where)


def _info(args: argparse.Namespace) -> int:
    print(summary(load_model(args.run, args.overrides, args.device)))
    return 0


def chat_input(values: Sequence[str] | None):
    """`--input` as given: one path; several as a pair (`--input rgb.png --input d.png`);
    `part=path` items (`--input rgb=a.png --input depth=a_d.png`, or one `rgb=a.png,depth=a_d.png`)
    as the dict the paired modalities (depth, normal) read."""
    if not values:
        return None
    items = [v for value in values for v in (value.split(",") if "=" in value else [value])]
    named = ["=" in v for v in items]
    if any(named) and not all(named):
        raise ConfigError(f"--input: expected every part as name=path or none, got {items}")
    if all(named):
        return dict(v.split("=", 1) for v in items)
    return items[0] if len(items) == 1 else tuple(items)


def _chat(args: argparse.Namespace) -> int:
    args.input = chat_input(args.input)
    model = load_model(args.run, device=args.device).eval()
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.prompt is not None or args.once:
        reply = model.chat(args.input, modality=args.modality if args.input else None,
                           prompt=args.prompt or None, **opts)  # fmt: skip
        print(reply.text)
        stem = time.strftime("reply-%Y%m%d-%H%M%S")  # earlier replies' files stay
        for path in reply.save(args.save_dir, stem):  # masks and images, one file each
            print(f"saved {path}")
        return 0
    from onellm.inference.interactive import session

    session(model, modality=args.modality, source=args.input, save_dir=args.save_dir, **opts)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from onellm.model import OneLLM
    from onellm.modeling.devices import resolve_device

    where = resolve_device(args.device)
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    if is_config(args.run):
        model = OneLLM.from_config(args.run, device=where, quantization=quantization)
    else:
        model = OneLLM.from_pretrained(args.run, device=where, quantization=quantization)
    from pathlib import Path

    from onellm.serve.app import serve

    run = Path(args.run.rstrip("/"))
    model_id = args.name or (run.stem if is_config(args.run) else run.name)
    print(f"onellm: serving {model_id} on http://{args.host}:{args.port} (UI at /, API at /v1)")
    serve(model, host=args.host, port=args.port, model_id=model_id, allow_dir=args.allow_dir,
          max_body_mb=args.max_body_mb, max_batch=args.max_batch,
          batch_wait_ms=args.batch_wait_ms, ui=not args.no_ui)  # fmt: skip
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from onellm.checkpoints.conformance import compare, report

    errors = compare(args.fixture)
    print(report(errors, args.tol))
    return 0 if all(e <= args.tol for e in errors.values()) else 1


def _train(args: argparse.Namespace) -> int:
    from onellm.training.recipe import train
    from onellm.training.stage import load_stage

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    final = train(load_stage(args.stage, overrides), resume=args.resume)
    print(f"saved {final}")
    return 0


def _shards(args: argparse.Namespace) -> int:
    from onellm.data.shards import write_shards

    for modality, pattern in write_shards(
        args.manifest, args.out, per_shard=args.per_shard
    ).items():
        print(f"{modality}: data: {pattern}")
    return 0


def _cache_features(args: argparse.Namespace) -> int:
    from onellm.data.feature_cache import cache_stage
    from onellm.training.stage import load_stage

    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    for name, note in cache_stage(load_stage(args.stage, overrides)).items():
        print(f"data.{name}: {note}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from onellm.cli.demo import run_demo

    run_demo(args.out, decoders=args.decoders, device=args.device)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from onellm.training.evaluate import evaluate

    model = load_model(args.run, device=args.device).eval()
    mods = args.modality or sorted(model.modalities)
    if args.task and "qa" in args.task:
        if len(args.task) > 1:
            raise ConfigError("eval: --task qa goes alone (the output tasks report per task)")
        return _write(qa_report(model, mods, args), args)
    if args.task:
        from onellm.registry import TASKS
        from onellm.training.evaluate import evaluate_outputs

        results = {
            t: evaluate_outputs(model, t, samples=args.samples, seed=args.seed) for t in args.task
        }
        for t, r in results.items():
            got = "  ".join(f"{k} {r[k]:.3f}" for k in TASKS.get(t).metrics if k in r)
            print(f"{t:<4} n={r['n']:<4} {got}")
        return _write(results, args)
    results = {
        m: evaluate(model, m, samples=args.samples, data=args.data, seed=args.seed) for m in mods
    }
    print(f"{'modality':<9} {'n':>5} {'exact':>7} {'BLEU-4':>7} {'CIDEr':>7}")
    for m, r in results.items():
        print(
            f"{m:<9} {r['n']:>5} {100 * r['exact_match']:>6.1f}% {r['bleu4']:>7.3f} {r['cider']:>7.3f}"
        )
    return _write(results, args)


def qa_report(model, mods: list[str], args: argparse.Namespace) -> dict:
    """`onellm eval RUN --task qa`: held-out question answering per modality and question."""
    from onellm.errors import InputError
    from onellm.training.evaluate import evaluate_qa

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


def _write(results: dict, args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    out = (
        Path(args.json)
        if args.json
        else (Path(args.run) / "eval.json" if Path(args.run).is_dir() else None)
    )
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    return 0


def summary(model) -> str:
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


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when there is one), cpu, cuda or cuda:N")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onellm", description="One multimodal LLM: build, chat, train."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build a model and show its parts")
    p.add_argument("run", help="a saved run dir, or a model YAML such as configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides (YAML only)")
    add_device(p)
    p.set_defaults(func=_info)
    p = sub.add_parser("chat", help="ask a model about an input; no prompt opens a session")
    p.add_argument("run", help="a saved run dir, or a model YAML such as configs/tiny.yaml")
    p.add_argument("prompt", nargs="?", help="the question; omit it for an interactive session")
    p.add_argument("--modality", help="the input's modality (image, audio, ...)")
    p.add_argument("--input", action="append",
                   help="the input file (or folder of frames); repeat it, or give rgb=A,depth=B, "
                        "for a paired input (depth, normal)")  # fmt: skip
    p.add_argument("--once", action="store_true", help="caption the input once, no session")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--save-dir", default="onellm-outputs",
                   help="where a reply's masks and images are saved (their paths are printed)")  # fmt: skip
    add_device(p)
    p.set_defaults(func=_chat)
    p = sub.add_parser("serve", help="an OpenAI-compatible API and a web UI over one model")
    p.add_argument("run", help="a saved run dir, or a model YAML such as configs/tiny.yaml")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    p.add_argument("--port", type=int, default=8000)
    bits = p.add_mutually_exclusive_group()
    bits.add_argument("--load-in-8bit", action="store_true",
                      help="8-bit LLM weights: bitsandbytes on CUDA, torchao int8 on the CPU")  # fmt: skip
    bits.add_argument("--load-in-4bit", action="store_true",
                      help="4-bit NF4 LLM weights (bitsandbytes, CUDA only)")  # fmt: skip
    p.add_argument("--allow-dir",
                   help="a folder whose files requests may name by path (default: none)")  # fmt: skip
    p.add_argument("--max-body-mb", type=float, default=32,
                   help="largest request body (uploads are base64 inside it)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=8, help="requests in one generate call")
    p.add_argument("--batch-wait-ms", type=float, default=20,
                   help="how long a batch waits for more requests before it runs")  # fmt: skip
    p.add_argument("--name", help="the model id in /v1/models (default: RUN's folder name)")
    p.add_argument("--no-ui", action="store_true", help="the API only, no Gradio UI")
    add_device(p)
    p.set_defaults(func=_serve)
    p = sub.add_parser("train", help="run one training stage from its YAML recipe")
    p.add_argument("stage", help="a stage YAML, e.g. configs/stages/stage1_image.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides (any key)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--device", help="the stage's device (same as device=...); default: its YAML's")
    p.set_defaults(func=_train)
    p = sub.add_parser("shards", help="write a JSONL manifest as WebDataset tar shards")
    p.add_argument("manifest", help="a JSONL manifest (onellm/data/manifest.py)")
    p.add_argument("out", help="folder for OUT/<modality>/shard-NNNNNN.tar")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per tar file")
    p.set_defaults(func=_shards)
    p = sub.add_parser("cache-features",
                       help="encode a stage's frozen-encoder inputs once into its feature_cache")  # fmt: skip
    p.add_argument("stage", help="a stage YAML; feature_cache=DIR names the folder")
    p.add_argument("overrides", nargs="*", help="key=value overrides (any key)")
    p.add_argument("--device", help="the stage's device (same as device=...); default: its YAML's")
    p.set_defaults(func=_cache_features)
    p = sub.add_parser("eval", help="held-out captioning: exact match, BLEU-4, CIDEr")
    p.add_argument("run", help="a saved run dir (or a model YAML)")
    p.add_argument("--modality", action="append", help="repeatable; default: every modality")
    p.add_argument(
        "--data", help="a JSONL manifest with captions; default: the shapes world's test split"
    )
    p.add_argument(
        "--task", action="append", choices=("qa", "seg", "gen", "sam", "t2i"),
        help="qa: question answering per modality and question (shapes world, or --data's "
             "conversations); output experts: seg (mIoU), gen (colour accuracy); the decoders "
             "alone: sam (point / phrase-prompted mIoU), t2i (colour accuracy from the caption)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=100, help="shapes-world scenes per modality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="where to write the results (default: RUN/eval.json)")
    add_device(p)
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "demo", help="staged alignment of the tiny model on the shapes world, then chats"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument(
        "--decoders", action="store_true",
        help="then the output experts too: SAM pretraining (5a) and stage 5 (<seg> masks, <gen> images)",
    )  # fmt: skip
    add_device(p)
    p.set_defaults(func=_demo)
    p = sub.add_parser("conformance", help="compare with a OneLLM reference fixture dir")
    p.add_argument("fixture", help="e.g. ../shared/conformance/onellm-reference-A")
    p.add_argument("--tol", type=float, default=1e-4)
    p.set_defaults(func=_conformance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse (3.11) leaves a positional prompt given after the options unparsed
    if getattr(args, "prompt", "") is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.prompt, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except OneLLMError as e:  # a user mistake: one clear line, no traceback
        print(f"onellm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
