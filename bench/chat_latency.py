"""Chat latency: time to first token and decode tokens/s of `model.chat` (median of runs).

.venv/bin/python bench/chat_latency.py [--config configs/tiny.yaml] [--tokens 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from onellm import OneLLM


class Clock(BaseStreamer):
    """Timestamps every batch of generated ids `generate` hands its streamer."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.first = True

    def put(self, value) -> None:
        if self.first:  # generate first puts the prompt (empty for inputs_embeds)
            self.first = False
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def measure(model: OneLLM, inputs, modality: str | None, tokens: int) -> tuple[float, float]:
    clock = Clock()
    start = time.perf_counter()
    model.chat(inputs, modality=modality, prompt="What is this?", max_new_tokens=tokens,
               min_new_tokens=tokens, streamer=clock, stop_strings=None)  # fmt: skip
    ttft = clock.times[0] - start
    rate = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])
    return ttft, rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = OneLLM.from_config(args.config).eval()
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    rows = {}
    for name, inputs, modality in (("image", image, "image"), ("text", None, None)):
        measure(model, inputs, modality, 4)  # warm-up
        runs = [measure(model, inputs, modality, args.tokens) for _ in range(args.runs)]
        rows[name] = {
            "ttft_ms": 1000 * statistics.median(r[0] for r in runs),
            "decode_tok_s": statistics.median(r[1] for r in runs),
        }
        print(
            f"{name:<6} time to first token {rows[name]['ttft_ms']:7.1f} ms   decode {rows[name]['decode_tok_s']:7.1f} tokens/s"
        )
    print(json.dumps({"config": args.config, "threads": torch.get_num_threads(), **rows}))


if __name__ == "__main__":
    main()
