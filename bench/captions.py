"""What scoring captions as COCO does costs: `score_captions` on N COCO-like captions (five
references each) by each path, and the stage tables' path on N shapes-world captions.

    .venv/bin/python -m bench.captions [--n 100] [--runs 3]

Rows (median seconds of `--runs`): ptb+meteor (Java tokenizer, METEOR's process started in
the call, as `score_captions` does), ptb (no METEOR), simple (no Java), meteor reused (a
second corpus on a `CaptionScorer` whose METEOR already runs: `onellm eval`'s later
modalities), stage table (`caption_metrics` on shapes-world captions: every stage
evaluation's scoring). Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from onellm.data import shapes
from onellm.evaluation.captions import CaptionScorer, score_captions
from onellm.training.evaluate import caption_metrics

WORDS = "a man woman dog cat red blue small large sits stands on in the near of with".split()


def coco_like(n: int) -> tuple[list[str], list[list[str]]]:
    """n predictions and five 10-word references each, with COCO's punctuation."""
    refs = [
        [f"{' '.join(WORDS[(i + k + j) % len(WORDS)] for j in range(10)).capitalize()}, ok."
         for k in range(5)]
        for i in range(n)
    ]  # fmt: skip
    return [r[0].lower() for r in refs], refs


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    preds, refs = coco_like(args.n)
    rows = {
        "ptb+meteor": timed(lambda: score_captions(preds, refs), args.runs),
        "ptb": timed(lambda: score_captions(preds, refs, meteor=False), args.runs),
        "simple": timed(
            lambda: score_captions(preds, refs, tokenizer="simple", meteor=False), args.runs
        ),  # fmt: skip
    }
    with CaptionScorer() as scorer:
        scorer.score(preds, refs)
        rows["meteor reused"] = timed(lambda: scorer.score(preds, refs), args.runs)
    scenes = shapes.sample("image", args.n, split="test", seed=1)
    captions = [s.caption for s in scenes]
    rows["stage table"] = timed(lambda: caption_metrics(captions, captions), args.runs)
    for name, seconds in rows.items():
        print(f"{name:<14} {seconds:7.3f} s per {args.n} captions")
    print(json.dumps({"n": args.n, "runs": args.runs, "seconds": rows}))


if __name__ == "__main__":
    main()
