"""What output experts add to a chat: a reply that ends in `<seg>` (mask included), against
the same chat, forced to the same tokens, with the model's output path switched off.

    .venv/bin/python -m bench.seg_chat --config bench/configs/small.yaml

Both runs generate the same forced reply ("it is the shape <seg>" then EOS) through
`model.chat` as a user calls it; the first also turns the `<seg>` state into a SAM mask.
`decoder_ms` is the head's and SAM's own work inside it (image encoder + mask decoder),
which any reply with a mask pays; `ratio_beside_decoder` is what is left: reading the
states (before issue 21, a second LLM pass over prompt and reply).
Medians over `--runs`, interleaved, after a warm-up. The model is the config's, with the
tiny config's `outputs.seg` (a 64 px SAM) added when it has none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np
import torch
import yaml
from transformers import LogitsProcessor, LogitsProcessorList

from bench.common import peak_rss_mb
from onellm import OneLLM


class Force(LogitsProcessor):
    """Every step's scores: -inf but for the next of `tokens` (the reply is fixed)."""

    def __init__(self, tokens: list[int], prompt_len: int) -> None:
        self.tokens, self.prompt_len = tokens, prompt_len

    def __call__(self, input_ids, scores):
        k = min(input_ids.shape[1] - self.prompt_len, len(self.tokens) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[k]] = 0
        return forced


def with_seg(config: str) -> dict:
    cfg = yaml.safe_load(open(config))
    if "seg" not in (cfg.get("outputs") or {}):
        tiny = yaml.safe_load(open("configs/tiny.yaml"))
        cfg["outputs"] = {"seg": tiny["outputs"]["seg"]}
        cfg["outputs"]["seg"]["decoder"].pop("text", None)
    return cfg


@contextlib.contextmanager
def outputs_off(model: OneLLM):
    """The same model, its output experts unused by chat (the reply stays text)."""
    from onellm.modeling.outputs import OutputExperts

    saved = model.outputs
    model.outputs = OutputExperts()
    try:
        yield
    finally:
        model.outputs = saved


def measure(config: str, *, runs: int) -> dict:
    torch.manual_seed(0)
    model = OneLLM.from_config(with_seg(config)).eval()
    tok = model.text_tokenizer
    size = model.modalities["image"].input_shape()[-1]
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    prompt = "Segment the shape in the picture."
    reply = tok("it is the shape", add_special_tokens=False).input_ids
    seg = tok.convert_tokens_to_ids("<seg>")
    tokens = [*reply, seg, tok.eos_token_id]

    def chat() -> float:
        force = LogitsProcessorList([Force(tokens, 0)])
        start = time.perf_counter()
        out = model.chat(
            image,
            modality="image",
            prompt=prompt,
            max_new_tokens=len(tokens),
            logits_processor=force,
        )
        took = time.perf_counter() - start
        assert out.token_ids[-1] == seg, out.token_ids
        return took

    decoding: list[float] = []
    reply = model.outputs.reply

    def timed_reply(*args, **kwargs):  # the heads' and SAM's own work, inside the chat
        start = time.perf_counter()
        out = reply(*args, **kwargs)
        decoding.append(time.perf_counter() - start)
        return out

    model.outputs.reply = timed_reply

    def with_outputs() -> float:
        return chat()

    def without() -> float:
        with outputs_off(model):
            return chat()

    fns = {"with_outputs": with_outputs, "without": without}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(fn())
    ms = {n: 1000 * statistics.median(t) for n, t in times.items()}
    decoder_ms = 1000 * statistics.median(decoding[1:])
    return {
        "config": config,
        "reply_tokens": len(tokens),
        "with_outputs_ms": ms["with_outputs"],
        "without_ms": ms["without"],
        "ratio": ms["with_outputs"] / ms["without"],
        "decoder_ms": decoder_ms,  # head + SAM (image encoder and mask decoder)
        "ratio_beside_decoder": (ms["with_outputs"] - decoder_ms) / ms["without"],
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/small.yaml")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    r = measure(args.config, runs=args.runs)
    print(
        f"<seg> chat {r['with_outputs_ms']:.1f} ms, same chat without output experts "
        f"{r['without_ms']:.1f} ms: {r['ratio']:.2f}x; the mask decoding itself "
        f"{r['decoder_ms']:.1f} ms, the rest {r['ratio_beside_decoder']:.2f}x"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
