"""The `onellm` command line: one subcommand per job, each a thin call into the library.

This module holds the parser only; each verb lives beside it (chat.py: info and chat,
serve.py, train.py: train, shards and cache-features, evaluate.py: eval and conformance,
demo.py) and is imported once parsing has named it and its paths and configs have been
checked (checks.py), so that `onellm --help`, a mistyped option and a bad path answer
before torch loads. The libraries' start-up notices stay off the terminal unless
`--verbose` (quiet.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence

from onellm.cli.checks import check
from onellm.cli.convert_options import add_convert_verb
from onellm.cli.eval_options import add_eval_options
from onellm.cli.lmms_options import add_lmms_options, lmms_backend
from onellm.cli.quiet import quiet
from onellm.errors import OneLLMError

RUN = "a saved run dir, a model YAML, or a shipped config's name (tiny)"
STAGE_DEVICE = "the stage's device (same as device=...); default: its YAML's"


def verb(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The verb `name` in onellm.cli.<module>, imported when it runs: each verb's module
    imports torch and the model (seconds), so it loads once parsing has named it."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"onellm.cli.{module}"), name)(args)

    return run


def _eval(args: argparse.Namespace) -> int:
    if args.backend == "lmms-eval" or args.tasks:
        return lmms_backend(args)  # onellm/lmms/run.py (the eval extra)
    return verb("evaluate", "eval_verb")(args)


class EvalTasks:
    """`eval --task`'s choices: qa, and the registered tasks with a held-out metric of their
    own, read from the registry only when a --task is given or listed."""

    def __iter__(self) -> Iterator[str]:
        from onellm.training.task import output_tasks  # imports torch and every task plug-in

        return iter(["qa", *output_tasks()])

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N"
    )


def add_model_verbs(sub) -> None:
    """info, chat and serve: the verbs that load RUN and use it."""
    p = sub.add_parser("info", help="build a model and show its parts")
    p.add_argument("run", help=RUN)
    p.add_argument("overrides", nargs="*", help="key=value overrides (YAML only)")
    add_device(p)
    p.set_defaults(func=verb("chat", "info_verb"))
    p = sub.add_parser("chat", help="ask a model about an input; no prompt opens a session")
    p.add_argument("run", help=RUN)
    p.add_argument("prompt", nargs="?", help="the question; omit it for an interactive session")
    p.add_argument("--modality", help="the input's modality (image, audio, ...)")
    p.add_argument(
        "--input",
        action="append",
        help="the input file (or folder of frames); repeat it, or give rgb=A,depth=B, "
        "for a paired input (depth, normal)",
    )
    p.add_argument("--once", action="store_true", help="caption the input once, no session")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--save-dir",
        default="onellm-outputs",
        help="where a reply's masks and images are saved (their paths are printed)",
    )
    add_device(p)
    p.set_defaults(func=verb("chat", "chat_verb"))
    p = sub.add_parser("serve", help="an OpenAI-compatible API and a web UI over one model")
    p.add_argument("run", help=RUN)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    p.add_argument("--port", type=int, default=8000)
    bits = p.add_mutually_exclusive_group()
    bits.add_argument(
        "--load-in-8bit",
        action="store_true",
        help="8-bit LLM weights: bitsandbytes on CUDA, torchao int8 on the CPU",
    )
    bits.add_argument(
        "--load-in-4bit",
        action="store_true",
        help="4-bit NF4 LLM weights (bitsandbytes, CUDA only)",
    )
    p.add_argument(
        "--allow-dir", help="a folder whose files requests may name by path (default: none)"
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=32,
        help="largest request body (uploads are base64 inside it)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="requests in one generate call")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20,
        help="how long a batch waits for more requests before it runs",
    )
    p.add_argument(
        "--served-model-name",
        "--name",
        dest="name",
        help="the model id in /v1/models and the UI (default: RUN as given, or a YAML's name)",
    )
    p.add_argument(
        "--api-key",
        help="a key every request must carry (Bearer; the UI asks for it once); default "
        "$ONELLM_API_KEY; required with a --host beyond loopback",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        help="another site whose pages may call this server (e.g. https://app.example.com); "
        "repeat for more",
    )
    p.add_argument("--no-ui", action="store_true", help="the API only, no Gradio UI")
    add_device(p)
    p.set_defaults(func=verb("serve", "serve_verb"))


def add_training_verbs(sub) -> None:
    """train and the verbs that prepare a stage's data."""
    p = sub.add_parser("train", help="run one training stage from its YAML recipe")
    p.add_argument("stage", help="a stage YAML, e.g. configs/stages/stage1_image.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides (any key)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--device", help=STAGE_DEVICE)
    p.set_defaults(func=verb("train", "train_verb"))
    p = sub.add_parser("shards", help="write a JSONL manifest as WebDataset tar shards")
    p.add_argument("manifest", help="a JSONL manifest (onellm/data/manifest.py)")
    p.add_argument("out", help="folder for OUT/<modality>/shard-NNNNNN.tar")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per tar file")
    p.set_defaults(func=verb("train", "shards_verb"))
    p = sub.add_parser(
        "cache-features", help="encode a stage's frozen-encoder inputs once into its feature_cache"
    )
    p.add_argument("stage", help="a stage YAML; feature_cache=DIR names the folder")
    p.add_argument("overrides", nargs="*", help="key=value overrides (any key)")
    p.add_argument("--device", help=STAGE_DEVICE)
    p.set_defaults(func=verb("train", "cache_features_verb"))
    p = sub.add_parser("export", help="write some of a saved run's weights as one safetensors file")
    p.add_argument("run", help=RUN)
    p.add_argument("out", help="the .safetensors file (a stage's load_weights: reads it)")
    p.add_argument(
        "--keys", nargs="+", required=True, help="tensor-name globs, e.g. 'outputs.*.decoder.*'"
    )
    p.set_defaults(func=verb("convert", "export_verb"))


def add_measuring_verbs(sub) -> None:
    """eval, demo and conformance."""
    p = sub.add_parser(
        "eval", help="held-out captioning scored as COCO: BLEU-4, METEOR, ROUGE-L, CIDEr"
    )
    p.add_argument("run", help="a saved run dir (or a model YAML)")
    p.add_argument("--modality", action="append", help="repeatable; default: every one (--data's)")
    p.add_argument(
        "--task",
        action="append",
        choices=EvalTasks(),
        metavar="TASK",
        help="one of %(choices)s; qa: question answering per modality and question (shapes "
        "world, or --data's conversations); the others: the task's own held-out metrics",
    )
    add_eval_options(p)
    add_device(p)
    add_lmms_options(p)
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "demo", help="staged alignment of the tiny model on the shapes world, then chats"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument(
        "--fast",
        action="store_true",
        help="stages 0-4 only: no output experts (<seg> masks, <gen> images)",
    )
    p.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="each stage's steps times this (a quick look: 0.05; the tables need 1)",
    )
    p.add_argument("overrides", nargs="*", help="key=value, applied to every stage")
    add_device(p)
    p.set_defaults(func=verb("demo", "demo_verb"))
    p = sub.add_parser("conformance", help="compare with a OneLLM reference fixture dir")
    p.add_argument("fixture", help="e.g. ../shared/conformance/onellm-reference-A")
    p.add_argument("--tol", type=float, default=1e-4)
    p.set_defaults(func=verb("evaluate", "conformance_verb"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onellm", description="One multimodal LLM: build, chat, train."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_verbs(sub)
    add_training_verbs(sub)
    add_measuring_verbs(sub)
    add_convert_verb(sub, verb("convert", "convert_verb"))
    for p in sub.choices.values():
        p.add_argument(
            "--verbose",
            action="store_true",
            help="show the libraries' start-up notices, deprecation warnings and weight bars",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true")
    quiet(verbose.parse_known_args(argv)[0].verbose)  # before parsing, which may load torch
    args = parse(argv)
    try:
        check(args)  # paths and configs, before the verb imports torch
        return args.func(args)
    except OneLLMError as e:  # a user mistake: one clear line, no traceback
        print(f"onellm: error: {e}", file=sys.stderr)
        return 2


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as argparse reads it, and what argparse leaves after an option."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse (3.11) leaves a positional prompt given after the options unparsed
    if getattr(args, "prompt", "") is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.prompt, extra = extra[0], []
    # and key=value overrides after an option (`train STAGE --resume steps=10`)
    if isinstance(getattr(args, "overrides", None), list) and all("=" in e for e in extra):
        args.overrides, extra = args.overrides + extra, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
