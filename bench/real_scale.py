"""The alignment workload at real shapes: onellm's step (features cached, samples packed)
against OneLLM's pipeline as bench/onellm_layout.py re-states it (captions padded to 96, CLIP
on every image every step, its UPM order), on the same samples, interleaved in one process.

    .venv/bin/python -m bench.real_scale --size small            # fp32, the CPU's row
    .venv/bin/python -m bench.real_scale --size 7b --batch 2 --rounds 2   # ~19 GB: a quiet machine only

Each size is a CLIP ViT, OneLLM's UPM and a Llama with random weights, written once as
local HF dirs under --dir (printed) and built from them the way a real checkpoint is
(`encoder.path`, `llm.path`): '7b' is OneLLM-7B's shapes (CLIP ViT-L/14 at 224, UPM 3 x 8
blocks at width 1024 with 30 queries, Llama-2-7B) in bf16; 'small' bench/configs/small.yaml's;
'tiny' the tests'. Caption lengths: bench/align.py's draw (log-normal, median 14 tokens,
sigma 0.45, 3..96); token ids random. Only the UPM side trains, as in stage 1.

Printed: samples/s of each (median round), their ratio, each step's counted GFLOP
(`FlopCounterMode`: matmuls, convolutions, attention) and the bound the counts give
(pipeline / onellm: what the ratio would be if time followed the counted work); the stage-2
step with image, video and audio samples packed in one micro-batch; with --profile, each
step's top operators (torch.profiler, self CPU time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.align import MAX_WORDS, caption_lengths
from bench.common import peak_rss_mb
from bench.onellm_layout import OneLLMLayout, official_clip
from bench.real_scale_model import SIZES, build, profile_ops
from bench.step import count_flops
from onellm.data.packing import pack
from onellm.training.freezing import set_trainable


class Workload:
    """The samples (pixels, cached features, caption ids) and the two steps on them."""

    def __init__(self, model, n: int, seed: int = 0) -> None:
        self.model = model
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        shape = model.modalities["image"].input_shape()
        self.pixels = torch.randn(n, *shape, generator=g).to(model.dtype)
        with torch.no_grad():  # the feature cache's: CLIP once per image, before training
            self.features = torch.cat([model.features(p[None], "image") for p in self.pixels])
        cfg = model.llm.config
        self.lengths = caption_lengths(n, rng)
        taken = set(model.layout.placeholder_ids.values())  # never a placeholder by chance
        self.texts = [
            [
                cfg.bos_token_id,
                *[t if t not in taken else 3 for t in rng.integers(3, cfg.vocab_size, k - 2)],
                cfg.eos_token_id,
            ]
            for k in self.lengths
        ]
        self.layout = OneLLMLayout(model.projection)

    def pipeline(self, idx: list[int]) -> torch.Tensor:
        """OneLLM's step: every caption padded with 0 to 96, CLIP on every image."""
        ids = torch.zeros(len(idx), MAX_WORDS, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(self.texts[i])] = torch.tensor(self.texts[i][:MAX_WORDS])
        with self.layout as layout:
            return layout.loss(self.model, self.pixels[idx], ids)

    def packed(self, idx: list[int]) -> dict:
        """onellm's stage-1 micro-batch: the block's run after BOS, samples end to end."""
        m = self.model
        rows = [m.layout.place(self.texts[i], self.texts[i], ["image"]) for i in idx]
        batch, order = pack(rows, 0, m.llm.config.max_position_embeddings)
        batch["features"] = {"image": self.features[[idx[k] for k in order]]}
        return batch

    def onellm(self, idx: list[int]) -> torch.Tensor:
        b = self.packed(idx)
        return self.model(
            b["input_ids"],
            b["attention_mask"],
            b["labels"],
            features=b["features"],
            position_ids=b["position_ids"],
        ).loss


def three_modalities(model, work: Workload, idx: list[int]) -> torch.Tensor:
    """The stage-2 step: image, video and audio samples (features cached) packed in one
    micro-batch, each modality's block from its own router and queries."""
    mods = ["image", "video", "audio"]
    rows, feats = [], {m: [] for m in mods}
    for j, i in enumerate(idx):
        m = mods[j % 3]
        rows.append(model.layout.place(work.texts[i], work.texts[i], [m]))
        feats[m].append(work.features[i][None] if m != "audio" else work.audio[i][None])
    batch, order = pack(rows, 0, model.llm.config.max_position_embeddings)
    features = {m: [] for m in mods}
    for k in order:  # each modality's features in reading order
        features[mods[k % 3]].append(feats[mods[k % 3]][k // 3])
    return model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        features={m: torch.cat(v) for m, v in features.items() if v},
        position_ids=batch["position_ids"],
    ).loss


def timed_rounds(model, fns: dict, batches, rounds: int) -> dict[str, list[float]]:
    """Each step on round r's batch, interleaved (order flipped each round), after one
    warm-up round; -> seconds per round, by step."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t = time.perf_counter()
            fn(batches(r)).backward()
            model.zero_grad(set_to_none=True)
            if r:
                times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--dir", default="/tmp/onellm-real-scale", help="where the HF dirs go")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--attn", default="sdpa", help="our LLM's attention: sdpa | flex_attention")
    ap.add_argument("--profile", action="store_true", help="each step's top operators")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, where = build(args.size, Path(args.dir))
    print(f"HF dirs: {where}", flush=True)
    model.llm.config._attn_implementation = args.attn
    set_trainable(model, ["projection.*"])
    n = args.batch * 4
    work = Workload(model, n)
    g = torch.Generator().manual_seed(1)
    audio_shape = model.modalities["audio"].input_shape()
    with torch.no_grad():
        work.audio = model.features(
            torch.randn(n, *audio_shape, generator=g).to(model.dtype), "audio"
        )

    def batches(r: int) -> list[int]:
        return [(r * args.batch + j) % n for j in range(args.batch)]

    def trio(idx: list[int]) -> list[int]:  # at least one sample of each of the three
        return [(idx[0] + j) % n for j in range(max(3, len(idx)))]

    with torch.no_grad():  # the same samples, the same loss (the bench's check)
        a, b = work.pipeline(batches(0)), work.onellm(batches(0))
    tol = 2e-2 if model.dtype == torch.bfloat16 else 1e-4
    assert abs(float(a) - float(b)) <= tol * abs(float(a)), (float(a), float(b))
    fns = {
        "onellm_pipeline": work.pipeline,
        "onellm": work.onellm,
        "onellm_3_modalities": lambda idx: three_modalities(model, work, trio(idx)),
    }
    gflop = {}
    for k, fn in fns.items():
        gflop[k] = count_flops(lambda fn=fn: fn(batches(0)).backward()) / 1e9
        model.zero_grad(set_to_none=True)
    with torch.no_grad():  # of which the pipeline's CLIP, which the feature cache removes
        ow = work.layout.weights(model)
        clip = count_flops(lambda: official_clip(model, ow, work.pixels[batches(0)])) / 1e9
    times = timed_rounds(model, fns, batches, args.rounds)
    size = {k: len(trio(batches(0))) if "3" in k else args.batch for k in times}
    rate = {k: size[k] / statistics.median(v) for k, v in times.items()}
    rows = [work.packed(batches(r)) for r in range(4)]
    positions = sum(int(b["input_ids"].numel()) for b in rows)
    real = sum(int(b["attention_mask"].sum()) for b in rows)
    result = {
        "bench": "real_scale",
        "size": args.size,
        "weights": str(model.dtype).removeprefix("torch."),
        "attn": args.attn,
        "batch": args.batch,
        "three_modality_batch": size["onellm_3_modalities"],
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "caption_tokens_median": float(np.median(work.lengths)),
        "caption_tokens_p95": float(np.percentile(work.lengths, 95)),
        "samples_per_s": rate,
        "ratio": rate["onellm"] / rate["onellm_pipeline"],
        "step_gflop": gflop,
        "pipeline_clip_gflop": clip,
        "bound": gflop["onellm_pipeline"] / gflop["onellm"],
        "ratio_of_bound": rate["onellm"]
        / rate["onellm_pipeline"]
        / (gflop["onellm_pipeline"] / gflop["onellm"]),
        "packed_padding_share": 1 - real / positions,
        "pipeline_padding_share": 1
        - sum(min(k, MAX_WORDS) for k in work.lengths) / (n * MAX_WORDS),
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(result))
    if args.profile:
        for k, fn in list(fns.items())[:2]:
            print(f"-- {k}: top operators by self CPU time")
            print(profile_ops(lambda fn=fn: fn(batches(0)).backward(), model))


if __name__ == "__main__":
    main()
