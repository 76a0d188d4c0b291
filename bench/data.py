"""Data at scale: decoding throughput, whether training waits on data, memory over a big manifest.

    .venv/bin/python -m bench.data loading [--images 256]
    .venv/bin/python -m bench.data memory [--records 200000] [--steps 300]

loading: shapes-world scenes drawn at 320x240 with sensor noise (so JPEG and PNG carry a
photo's entropy), written as JPEG (quality 90) and PNG files and read through a manifest as
a stage reads it (manifest index, file decode, CLIP's resize and crop to the 'small'
config's 224 px, caption tokenisation, collate) with 0 and 2 DataLoader workers; then a
short stage of the tiny model on the JPEG manifest, whose log says what share of its time
it waited on data (`data_wait`).
memory: a manifest of `--records` lines (over 1000 distinct 64 px PNG files), a stage of
the tiny model reading `--steps` x 32 of its records; resident memory of the training process
and its workers sampled every 0.25 s, reported at quarters of the run.
Each prints one JSON line last (bench/run.py collects it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from onellm.data import shapes

STAGE1 = "configs/stages/stage1_image.yaml"
SMALL = "bench/configs/small.yaml"


def write_images(folder: Path, n: int, size: tuple[int, int], fmt: str) -> Path:
    """n noisy shapes-world images of `size` as `fmt` files, and their manifest."""
    from onellm.modalities.image import ImageModality

    mod = ImageModality(size=max(size))
    rng = np.random.default_rng(0)
    lines = []
    for i, scene in enumerate(shapes.sample(mod, n, split="train", seed=3)):
        im = Image.fromarray(scene.input).resize(size)
        noisy = np.asarray(im, dtype=np.int16) + rng.normal(0, 8, (size[1], size[0], 3))
        path = folder / f"{i:05d}.{fmt}"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        lines.append(
            json.dumps({"modality": "image", "input": path.name, "caption": scene.caption})
        )
    manifest = folder / f"{fmt}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def stage(manifest: Path, out: Path, *extra: str):
    from onellm.training.stage import load_stage

    return load_stage(
        STAGE1,
        [
            f"output_dir={out}",
            f"data.image.data={manifest}",
            "eval.modalities=[]",
            "log_every=5",
            *extra,
        ],
    )


def loading(args) -> dict:
    from onellm import OneLLM
    from onellm.data.loader import StepBatches, step_loader
    from onellm.data.sources import Source
    from onellm.training.recipe import Recipe, read_metrics

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = OneLLM.from_config(SMALL)
        for fmt in ("jpg", "png"):
            manifest = write_images(tmp, args.images, (320, 240), fmt)
            for workers in (0, 2):
                cfg = stage(
                    manifest,
                    tmp / "x",
                    f"init_from={SMALL}",
                    "batch_size=32",
                    f"steps={args.images // 32 * 2}",
                    f"data_workers={workers}",
                )
                sources = {"image": Source(model, "image", cfg.data["image"], cfg.seed)}
                loader = step_loader(StepBatches(cfg, sources, model), 0, torch.device("cpu"))
                it = iter(loader)
                next(it)  # workers started, first step ready
                t, n = time.perf_counter(), 0
                for _, batches in it:
                    n += sum(len(b["input_ids"]) for b in batches)
                rows.append(
                    {
                        "format": fmt,
                        "workers": workers,
                        "samples_per_s": n / (time.perf_counter() - t),
                    }
                )
        # does a training step wait on data? the tiny model's stage 1 on the JPEG files
        for workers in (0, 2):
            out = tmp / f"train{workers}"
            cfg = stage(
                tmp / "jpg.jsonl",
                out,
                "init_from=configs/tiny.yaml",
                "batch_size=32",
                "steps=40",
                f"data_workers={workers}",
            )
            r = Recipe(cfg, quiet=True).setup()
            r.train()
            logs = [m for m in read_metrics(out) if m["event"] == "train"][1:]  # after start-up
            rows.append(
                {
                    "format": "jpg",
                    "workers": workers,
                    "train_tiny": True,
                    "samples_per_s": float(np.mean([m["samples_per_s"] for m in logs])),
                    "data_wait": float(np.mean([m["data_wait"] for m in logs])),
                }
            )
    return {"bench": "data_loading", "images": args.images, "rows": rows}


def memory(args) -> dict:
    from onellm.data.manifest import Manifest
    from onellm.training.recipe import Recipe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes = shapes.sample("image", 1000, split="train", seed=4)
        for i, s in enumerate(scenes):
            Image.fromarray(s.input).save(tmp / f"{i}.png")
        with open(tmp / "big.jsonl", "w") as f:
            for i in range(args.records):
                s = scenes[i % 1000]
                f.write(
                    json.dumps(
                        {"modality": "image", "input": f"{i % 1000}.png", "caption": s.caption}
                    )
                    + "\n"
                )
        t = time.perf_counter()
        index = Manifest(tmp / "big.jsonl")
        index_s = time.perf_counter() - t
        index_mb = (index.offsets.nbytes + index.lines.nbytes) / 2**20
        del index
        workers = [f"data_workers={args.workers}"] if args.workers else []
        me = psutil.Process()
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                procs = [me, *me.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                samples.append((time.perf_counter(), rss / 2**20))
                time.sleep(0.25)

        cfg = stage(
            tmp / "big.jsonl",
            tmp / "run",
            "init_from=configs/tiny.yaml",
            "batch_size=32",
            f"steps={args.steps}",
            *workers,
        )
        r = Recipe(cfg, quiet=True).setup()
        threading.Thread(target=sample, daemon=True).start()
        time.sleep(0.5)
        start = time.perf_counter()
        r.train()
        end = time.perf_counter()
        done.set()
        during = [(t, m) for t, m in samples if start <= t <= end]
        quarters = {}
        for q in (0.1, 0.25, 0.5, 0.75, 1.0):
            at = start + q * (end - start)
            quarters[f"{int(q * 100)}%"] = max(m for t, m in during if t <= at)
    return {
        "bench": "data_memory",
        "records": args.records,
        "steps": args.steps,
        "workers": args.workers,
        "records_read": args.steps * 32,
        "index_s": index_s,
        "index_mb": index_mb,
        "peak_rss_mb_by_progress": quarters,
        "train_s": end - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("loading", "memory"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(json.dumps(loading(args) if args.what == "loading" else memory(args)))


if __name__ == "__main__":
    main()
