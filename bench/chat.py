"""Chat speed: time to first token and decode tokens/s of `model.chat` on an image, against
transformers' `generate` on the bare LLM with a text prompt of the same total length.

    .venv/bin/python -m bench.chat --config configs/tiny.yaml

`model.chat` runs as a user calls it (template, stop strings, the image through encoder and
UPM); `generate` gets token ids only. Both are forced to the same number of new tokens.
Medians over `--runs`, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from bench.common import peak_rss_mb
from onellm import OneLLM


class Clock(BaseStreamer):
    """Timestamps every batch of new ids `generate` hands its streamer."""

    def __init__(self, skip_first: bool) -> None:
        self.times: list[float] = []
        self.skip = skip_first  # generate first puts the prompt ids (none for inputs_embeds)

    def put(self, value) -> None:
        if self.skip:
            self.skip = False
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def rates(start: float, clock: Clock) -> tuple[float, float]:
    """-> (time to first token in s, decode tokens/s after the first)."""
    t = clock.times
    return t[0] - start, (len(t) - 1) / (t[-1] - t[0])


def chat_once(model: OneLLM, image, prompt: str, tokens: int) -> tuple[float, float]:
    clock = Clock(skip_first=False)
    start = time.perf_counter()
    model.chat(
        image,
        modality="image",
        prompt=prompt,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        streamer=clock,
    )
    return rates(start, clock)


def generate_once(model: OneLLM, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    clock = Clock(skip_first=True)
    start = time.perf_counter()
    with torch.no_grad():
        model.llm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=0,
        )
    return rates(start, clock)


def medians(fns: dict, runs: int) -> dict:
    """Median TTFT and decode rate of each function; runs interleaved so drift hits all alike."""
    results: dict = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(runs):
        for name, fn in fns.items():
            results[name].append(fn())
    return {
        name: {
            "ttft_ms": 1000 * statistics.median(r[0] for r in rs),
            "decode_tok_s": statistics.median(r[1] for r in rs),
        }
        for name, rs in results.items()
    }


def measure(config: str, *, tokens: int, runs: int) -> dict:
    torch.manual_seed(0)
    model = OneLLM.from_config(config).eval()
    size = model.modalities["image"].input_shape()[-1]
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    prompt = "What shape is in the picture?"
    # the same total length as chat's sequence: template + placeholders expanded
    from onellm.inference.chat import prompt_ids
    from onellm.modeling.template import render_prompt

    length = len(prompt_ids(model, render_prompt(model.config.chat, prompt, []), ["image"]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.text_tokenizer.vocab_size, (1, length), generator=g)
    m = medians(
        {
            "chat": lambda: chat_once(model, image, prompt, tokens),
            "generate": lambda: generate_once(model, ids, tokens),
        },
        runs,
    )
    chat, bare = m["chat"], m["generate"]
    return {
        "config": config,
        "prompt_tokens": length,
        "new_tokens": tokens,
        "chat": chat,
        "generate": bare,
        "decode_ratio": chat["decode_tok_s"] / bare["decode_tok_s"],
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1, help="ignored (one warm-up run)")
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    r = measure(args.config, tokens=args.tokens, runs=args.runs)
    for name in ("chat", "generate"):
        print(
            f"{name:<9} time to first token {r[name]['ttft_ms']:7.1f} ms   "
            f"decode {r[name]['decode_tok_s']:7.1f} tokens/s"
        )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
