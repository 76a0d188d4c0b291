"""The equal-work step, ours against the official OneLLM code's, in one process on the same
weights, alternating (order flipped each round) so machine noise hits both alike.

    .venv/bin/python -m bench.side_by_side --config bench/configs/reference-a.yaml --rounds 45

fp32, batch 2, 12 text tokens, forward + backward, UPM trainable (bench/step.py's step; the
official one is bench/onellm_layout.py, checked equal to ours first). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.onellm_layout import OneLLMLayout
from bench.step import check_same_output, run_step, step_inputs
from onellm import OneLLM
from onellm.training.freezing import set_trainable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/reference-a.yaml")
    ap.add_argument("--rounds", type=int, default=45)
    ap.add_argument("--compile", action="store_true", help="ours with compile: true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = OneLLM.from_config(args.config).train()
    set_trainable(model, ["projection.*"])
    image, ids = step_inputs(model, 2, 12)
    check_same_output(model, image, ids)
    layout = OneLLMLayout(model.projection)
    if args.compile:
        model.projection.experts.compile()

    def ours() -> None:
        run_step(model, image, ids, "fp32", backward=True)

    def official() -> None:
        with layout:
            run_step(model, image, ids, "fp32", backward=True)

    for _ in range(3):  # warm-up (and compile)
        ours()
        official()
    times: dict[str, list[float]] = {"onellm": [], "official": []}
    for r in range(args.rounds):
        order = (("onellm", ours), ("official", official))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - t))
    ratios = [b / a for a, b in zip(times["onellm"], times["official"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    print(
        json.dumps(
            {
                "config": args.config,
                "rounds": args.rounds,
                "compiled": args.compile,
                "threads": torch.get_num_threads(),
                "onellm_ms": statistics.median(times["onellm"]),
                "official_ms": statistics.median(times["official"]),
                "ratio": statistics.median(times["official"]) / statistics.median(times["onellm"]),
                "per_round_iqr": [q[0], q[2]],
            }
        )
    )


if __name__ == "__main__":
    main()
