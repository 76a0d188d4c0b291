"""The `onellm` command line: one subcommand per job, each a thin call into the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from onellm.errors import OneLLMError


def _info(args: argparse.Namespace) -> int:
    from onellm.model import OneLLM

    model = OneLLM.from_config(args.config, args.overrides)
    print(summary(model))
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from onellm.conformance import compare, report

    errors = compare(args.fixture)
    print(report(errors, args.tol))
    return 0 if all(e <= args.tol for e in errors.values()) else 1


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onellm", description="One multimodal LLM: build, chat, train."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build a model from a config and show its parts")
    p.add_argument("config", help="model YAML, e.g. configs/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_info)
    p = sub.add_parser("conformance", help="compare with a OneLLM reference fixture dir")
    p.add_argument("fixture", help="e.g. ../shared/conformance/onellm-reference-A")
    p.add_argument("--tol", type=float, default=1e-4)
    p.set_defaults(func=_conformance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OneLLMError as e:  # a user mistake: one clear line, no traceback
        print(f"onellm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
