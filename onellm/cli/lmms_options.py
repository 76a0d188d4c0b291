"""`onellm eval`'s lmms-eval backend: its options, and the verb, loaded only when asked for
(lmms-eval is the eval extra; onellm/lmms/run.py)."""

from __future__ import annotations

import argparse


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
    from onellm.lmms.run import lmms_verb  # the eval extra: lmms-eval loads with the verb

    return lmms_verb(args)
