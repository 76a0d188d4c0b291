"""`python -m onellm.lmms tasks-path`: the folder to give lmms-eval as `--include_path`.
`python -m onellm.lmms write-shapes RUN OUT`: held-out shapes-world scenes as files and a
manifest (onellm/lmms/shapes_data.py), to try the tasks without downloading a benchmark."""

from __future__ import annotations

import argparse
import sys

from onellm.lmms import tasks_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onellm.lmms")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("tasks-path", help="print the folder of onellm's lmms-eval task YAMLs")
    w = sub.add_parser("write-shapes", help="held-out shapes-world scenes as files + manifest")
    w.add_argument("run", help="a saved run dir (its modalities' sizes)")
    w.add_argument("out", help="the folder to write")
    w.add_argument("--samples", type=int, default=50, help="scenes per modality")
    w.add_argument("--seed", type=int, default=1, help="the draw (1: the default stage's)")
    w.add_argument("--modality", action="append", help="repeatable; default: the shipped five")
    args = p.parse_args(argv)
    if args.verb == "tasks-path":
        print(tasks_path())
        return 0
    # torch and the model: only for this verb (tasks-path prints at once)
    from onellm.lmms.model import load
    from onellm.lmms.shapes_data import SHIPPED, write_held_out

    model = load(args.run, "cpu", None)
    manifest = write_held_out(
        model, args.out, args.modality or SHIPPED, samples=args.samples, seed=args.seed
    )
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
