"""Alignment workload throughput: onellm's stage-1 path against OneLLM's pipeline, same data.

    .venv/bin/python -m bench.align [--config bench/configs/small.yaml] [--batch 4] [--rounds 8]

Both train the UPM on image-caption pairs with CLIP and the LLM frozen, on the same weights,
in one process, rounds interleaved (forward + backward, samples/s from the median round):

- OneLLM's pipeline (its pretraining dataset and `MetaModel.forward`): every caption padded
  with 0 to `max_words` = 96 tokens, CLIP run on every image every step, and the official
  step (bench/onellm_layout.py: its UPM order, LM head on the text rows, loss ignoring 0);
- onellm: a stage's own path (a manifest source, the caption task's collate padding to the
  batch's longest caption, `feature_cache` so the frozen CLIP ran once per image, before the
  rounds; its cost per image is reported beside).

Caption lengths are drawn log-normal with a median of 14 tokens (sigma 0.45: 5% under 7,
5% over 30, capped at 96), COCO's median with a LAION-like tail; token ids are random.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import peak_rss_mb
from bench.onellm_layout import OneLLMLayout
from bench.step import count_flops
from onellm import OneLLM
from onellm.data import feature_cache, shapes
from onellm.data.batches import collate
from onellm.data.sources import Source
from onellm.training.freezing import set_trainable
from onellm.training.stage import load_stage

MAX_WORDS = 96  # OneLLM's pretraining datasets pad or cut every caption to this


def caption_lengths(n: int, rng: np.random.Generator) -> list[int]:
    return [int(min(MAX_WORDS, max(3, round(x)))) for x in rng.lognormal(np.log(14), 0.45, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/small.yaml")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--compile", action="store_true", help="ours with the stage's compile: true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = OneLLM.from_config(args.config)
    set_trainable(model, ["projection.*"])
    rng = np.random.default_rng(0)
    vocab = model.llm.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = []
        for i, s in enumerate(
            shapes.sample("image", args.images, split="train", seed=2, model=model)
        ):
            Image.fromarray(s.input).save(tmp / f"{i}.png")
            lines.append(
                json.dumps({"modality": "image", "input": f"{i}.png", "caption": s.caption})
            )
        (tmp / "m.jsonl").write_text("\n".join(lines) + "\n")
        cfg = load_stage(
            "configs/stages/stage1_image.yaml",
            [
                f"init_from={args.config}",
                f"output_dir={tmp / 'run'}",
                f"data.image.data={tmp / 'm.jsonl'}",
            ],
        )
        src = Source(model, "image", cfg.data["image"], 0)
        pixels = torch.cat([src.scene(i).input for i in range(args.images)])
        t = time.perf_counter()
        feature_cache.attach(model, {"image": src}, tmp / "features", quiet=True)
        cache_ms = 1000 * (time.perf_counter() - t) / args.images
        lengths = caption_lengths(args.images, rng)
        texts = [
            [
                model.llm.config.bos_token_id,
                *rng.integers(3, vocab, n - 2).tolist(),
                model.llm.config.eos_token_id,
            ]
            for n in lengths
        ]

        def batch(r: int) -> list[int]:
            return [(r * args.batch + j) % args.images for j in range(args.batch)]

        def onellm_pipeline(idx: list[int]) -> None:
            ids = torch.zeros(len(idx), MAX_WORDS, dtype=torch.long)  # padded with 0
            for row, i in enumerate(idx):
                ids[row, : len(texts[i])] = torch.tensor(texts[i][:MAX_WORDS])
            with OneLLMLayout(model.projection) as layout:
                layout.loss(model, pixels[idx], ids).backward()

        def ours(idx: list[int]) -> None:
            rows = [model.layout.place(texts[i], texts[i], ["image"]) for i in idx]
            b = collate(rows, 0)  # to the batch's longest, the block's run after BOS
            features = torch.cat([src.scene(i).features for i in idx])  # scene i, as pixels[i]
            model(
                b["input_ids"], b["attention_mask"], b["labels"], features={"image": features}
            ).loss.backward()

        if args.compile:  # as `compile: true` in a stage; the baseline's loop runs the layers eager
            model.projection.experts.compile()
        times: dict[str, list[float]] = {"onellm_pipeline": [], "onellm": []}
        fns = {"onellm_pipeline": onellm_pipeline, "onellm": ours}
        # the work each does per step (fwd + bwd): why the ratio is what it is
        gflop = {k: count_flops(lambda fn=fn: fn(batch(0))) / 1e9 for k, fn in fns.items()}
        model.zero_grad(set_to_none=True)
        for r in range(args.rounds + 2):  # rounds 0 and 1 warm up (and compile)
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(batch(r))
                model.zero_grad(set_to_none=True)
                if r > 1:
                    times[name].append(time.perf_counter() - t)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    padded = [min(MAX_WORDS, n) for n in lengths]
    print(
        json.dumps(
            {
                "bench": "align",
                "config": args.config,
                "batch": args.batch,
                "rounds": args.rounds,
                "compiled": args.compile,
                "caption_tokens_median": float(np.median(lengths)),
                "caption_tokens_p95": float(np.percentile(lengths, 95)),
                "padded_to": MAX_WORDS,
                "mean_text_tokens": float(np.mean(padded)),
                "samples_per_s": rate,
                "speedup": rate["onellm"] / rate["onellm_pipeline"],
                "step_gflop": gflop,
                "cache_build_ms_per_image": cache_ms,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
