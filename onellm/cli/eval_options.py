"""`onellm eval`'s options for what is asked and how captions are scored (the verb:
evaluate.py), apart from main.py so the parser stays a table of verbs."""

from __future__ import annotations

import argparse


def add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="a JSONL manifest (docs/data.md; several references: 'captions': [...]); "
        "default: the shapes world's test split",
    )
    p.add_argument("--samples", type=int, help="shapes-world scenes per modality (default: 100)")
    p.add_argument(
        "--seed",
        type=int,
        help="the shapes-world draw; default: the one the stage that saved RUN evaluated on "
        "(its seed + 1, and its eval.samples: RUN/../stage.yaml), so the figures are its own",
    )
    p.add_argument("--prompt", help="ask each caption with this (default: none, as trained)")
    p.add_argument(
        "--max-new-tokens", type=int, help="default: the stage's eval.max_new_tokens; qa: 8"
    )
    p.add_argument(
        "--no-meteor", action="store_true", help="skip METEOR (its Java start takes ~7 s)"
    )
    p.add_argument(
        "--simple-tokenizer",
        action="store_true",
        help="tokenise captions in Python, not with Java's PTB tokenizer (equal on plain captions)",
    )
    p.add_argument("--json", help="write here (default: RUN/eval_caption.json, eval_qa.json, ...)")
