"""`onellm eval`'s lmms-eval backend: its options, and the verb, loaded only when asked for
(lmms-eval is the eval extra; onellm/lmms/run.py)."""

from __future__ import annotations

import argparse

from onellm.errors import ConfigError

# eval's options for its own backend, which lmms-eval's tasks set in their YAMLs instead
ONELLM_ONLY = ("modality", "task", "samples", "seed", "prompt", "no_meteor", "simple_tokenizer")


def add_lmms_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("onellm", "lmms-eval"),
        default="onellm",
        help="lmms-eval: run its --tasks in-process on RUN (onellm's own tasks included: "
        "docs/lmms-eval.md); --data is their manifest",
    )
    p.add_argument("--tasks", help="with --backend lmms-eval: T[,T2] (e.g. onellm_point_cap)")
    p.add_argument("--batch-size", type=int, default=8, help="with --backend lmms-eval")


def lmms_backend(args: argparse.Namespace) -> int:
    """The lmms-eval backend, its options checked: an option it would ignore is refused."""
    if args.backend != "lmms-eval":
        raise ConfigError("eval: --tasks goes with --backend lmms-eval (--task is onellm's)")
    given = [f"--{k.replace('_', '-')}" for k in ONELLM_ONLY if getattr(args, k, None)]
    if given:
        raise ConfigError(
            f"eval --backend lmms-eval: {', '.join(given)} are onellm's backend's; lmms-eval's "
            "tasks set their own prompts and metrics (docs/lmms-eval.md)"
        )
    from onellm.lmms.run import lmms_verb  # the eval extra: lmms-eval loads with the verb

    return lmms_verb(args)
