"""Run every benchmark (each in its own process, so peak RSS is its own) and print one table.

    .venv/bin/python -m bench.run [--out bench/results.json] [--quick]

Rows: (a) the alignment step at the size of the OneLLM conformance fixture, as the official
OneLLM code computes it (bench/onellm_layout.py: its step re-stated on our weights; see
docs/bench-baseline.md) and as we do; (b) the same step at the 'small' size in fp32 and bf16
autocast, with MFU against the peak matmul rate measured in the same process; (c)
`model.chat` against bare `generate` on the tiny and small configs, and a chat that answers
with `<seg>` (mask included) against the same chat without output experts; (d-f) data at scale
(bench/data.py, bench/align.py): decoding with 0 and 2 workers, memory over a 200,000-record
manifest, the alignment workload against OneLLM's pipeline; (g) `onellm serve` on the tiny
config: tokens/s of 8 clients at once against 1, and the server's memory over a 500-request
soak (bench/serve.py; loopback only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

REF_A, SMALL = "bench/configs/reference-a.yaml", "bench/configs/small.yaml"
# No absolute timing of the official code is printed: issue 7's (fwd+bwd 365-455 ms at ref-A)
# came from another process on another day and cannot be set against this run's rows (the
# official step measured in one process beside onellm, same weights, is 1.07x (ref-A) and
# 1.11-1.15x (small) slower, docs/bench-baseline.md). The "official OneLLM" rows are that
# step (bench/onellm_layout.py), timed in this run.

STEPS = [  # (row name, bench.step arguments)
    ("a. ref-A step, official OneLLM", ["--config", REF_A, "--layout", "reference"]),
    ("a. ref-A step, onellm", ["--config", REF_A]),
    ("a. ref-A step, onellm+compile", ["--config", REF_A, "--compile"]),
    (
        "b. small step fp32, official OneLLM",
        ["--config", SMALL, "--layout", "reference", "--runs", "5"],
    ),
    ("b. small step fp32, onellm", ["--config", SMALL, "--runs", "5"]),
    # bf16 autocast: one timed run (CPUs without bf16 instructions take minutes here)
    (
        "b. small step bf16, onellm",
        ["--config", SMALL, "--precision", "bf16", "--runs", "1", "--warmup", "1"],
    ),
]
DATA = [  # (row name, module, arguments, --quick's arguments)
    (
        "d. data loading",
        "bench.data",
        ["loading", "--images", "256"],
        ["loading", "--images", "128"],
    ),
    ("e. memory, 200k-record manifest", "bench.data", ["memory"], ["memory", "--steps", "100"]),
    ("f. alignment workload, small", "bench.align", ["--rounds", "8"], ["--rounds", "3"]),
]
CHATS = [
    ("c. chat tiny", ["--config", "configs/tiny.yaml"]),
    ("c. chat small", ["--config", SMALL, "--tokens", "32", "--runs", "5"]),
]
SEG_CHAT = ("c. <seg> chat small", ["--config", SMALL, "--runs", "9"])  # bench/seg_chat.py
SERVE = (["--requests", "12", "--soak", "500"], ["--requests", "4", "--soak", "100"])  # quick


def run(module: str, args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = f"{'benchmark':<36} {'fwd ms':>8} {'fwd+bwd ms':>10} {'samples/s':>9} {'MFU':>5} {'TTFT ms':>8} {'tok/s':>7} {'vs base':>8} {'RSS MB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "with_outputs_ms" in r:  # bench.seg_chat: whole chats, not per-token rates
            lines.append(
                f"{r['name']:<36} {r['with_outputs_ms']:.1f} ms vs {r['without_ms']:.1f} "
                f"ms without output experts: {r['ratio']:.2f}x (mask decoding "
                f"{r['decoder_ms']:.1f} ms; the rest {r['ratio_beside_decoder']:.2f}x)"
            )
            continue
        if "forward_ms" in r:
            cells = (
                f"{r['forward_ms']:8.1f} {r['forward_backward_ms']:10.1f} "
                f"{r['samples_per_s']:9.2f} {100 * r['mfu']:4.0f}% {'':>8} {'':>7}"
            )
        else:
            c = r["chat"]
            cells = f"{'':>8} {'':>10} {'':>9} {'':>5} {c['ttft_ms']:8.1f} {c['decode_tok_s']:7.1f}"
        vs = f"{r['vs_base']:7.2f}x" if "vs_base" in r else f"{'':>8}"
        lines.append(f"{r['name']:<36} {cells} {vs} {r['peak_rss_mb']:7.0f}")
        if "generate" in r:
            g = r["generate"]
            lines.append(
                f"{'   bare generate, same length':<36} {'':>8} {'':>10} {'':>9} {'':>5} "
                f"{g['ttft_ms']:8.1f} {g['decode_tok_s']:7.1f}"
            )
    lines.append(
        "official OneLLM: the official code's step (its UPM order, its LM head on the "
        "text rows only, its loss) on the same weights, timed in this run; "
        "docs/bench-baseline.md"
    )
    lines.append(
        "vs base: step = official OneLLM fwd+bwd time / this row's (same size; fp32 "
        "baseline for bf16); chat = decode tok/s / bare generate's"
    )
    return "\n".join(lines)


def data_table(rows: list[dict]) -> str:
    """The data rows: (d) decoding samples/s and data wait, (e) memory, (f) alignment."""
    lines = [f"{'data benchmark':<44} {'samples/s':>9} {'data wait':>9} {'RSS MB':>18}", "-" * 83]
    for r in rows:
        if r["bench"] == "data_loading":
            for x in r["rows"]:
                what = "tiny stage 1 on" if x.get("train_tiny") else "decode + preprocess 224 px,"
                name = f"d. {what} {x['format']}, {x['workers']} workers"
                wait = f"{100 * x['data_wait']:8.0f}%" if "data_wait" in x else f"{'':>9}"
                lines.append(f"{name:<44} {x['samples_per_s']:9.1f} {wait}")
        elif r["bench"] == "data_memory":
            q = r["peak_rss_mb_by_progress"]
            lines.append(
                f"{'e. ' + format(r['records'], ',') + '-record manifest, peak RSS':<44} "
                f"{'':>9} {'':>9} {q['10%']:7.0f} -> {q['100%']:7.0f}"
            )
            lines.append(
                f"   at 10/25/50/75/100% of {r['steps']} steps ({r['records_read']} records "
                f"read, {r['workers']} workers): " + " / ".join(f"{v:.0f}" for v in q.values())
            )
            lines.append(f"   index: {r['index_mb']:.1f} MB, built in {r['index_s']:.2f} s")
        else:
            sps = r["samples_per_s"]
            lines.append(
                f"{'f. OneLLM pipeline (pad 96, CLIP each step)':<44} {sps['onellm_pipeline']:9.2f}"
            )
            lines.append(
                f"{'f. onellm (batch padding, feature cache)':<44} {sps['onellm']:9.2f}   "
                f"{r['speedup']:.2f}x"
            )
            g = r["step_gflop"]
            lines.append(
                f"   GFLOP a step {g['onellm_pipeline']:.0f} vs {g['onellm']:.0f}; captions: median "
                f"{r['caption_tokens_median']:.0f} tokens, p95 {r['caption_tokens_p95']:.0f}; "
                f"cache built once at {r['cache_build_ms_per_image']:.0f} ms an image"
            )
    return "\n".join(lines)


def serve_table(r: dict) -> str:
    """(g) the server: tokens/s of 1 client and of 8 at once, batch sizes, soak memory."""
    one, many, s = r["one_client"], r["many_clients"], r["soak"]
    lines = [
        f"{'serve benchmark (tiny, 127.0.0.1)':<44} {'requests':>8} {'tok/s':>8} {'vs 1':>6}",
        "-" * 69,
        f"{'g. 1 client':<44} {one['requests']:8d} {one['tokens_per_s']:8.1f}",
        f"{'g. ' + str(many['clients']) + ' clients at once':<44} {many['requests']:8d} "
        f"{many['tokens_per_s']:8.1f} {r['speedup']:5.2f}x",
        f"   generate calls by batch size: {r['batch_sizes']}",
    ]
    if s:
        lines.append(
            f"g. soak: {s['requests']} requests {s['status_counts']}, server RSS "
            f"{s['rss_mb_after_warmup']:.0f} -> {s['rss_mb_by_100'][-1]:.0f} MB "
            f"(by 100: {' / '.join(f'{v:.0f}' for v in s['rss_mb_by_100'])})"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results.json")
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke check, noisier)")
    args = ap.parse_args()
    quick = ["--runs", "3", "--warmup", "1"] if args.quick else []  # later flags win
    rows, start = [], time.time()
    jobs = [("bench.step", n, a if "bf16" in a else a + quick) for n, a in STEPS]
    jobs += [("bench.chat", n, a + (["--runs", "3"] if args.quick else [])) for n, a in CHATS]
    seg_name, seg_args = SEG_CHAT
    jobs.append(("bench.seg_chat", seg_name, seg_args + (["--runs", "3"] if args.quick else [])))
    base: dict[str, float] = {}
    for module, name, a in tqdm(jobs, desc="benchmarks", unit="bench"):
        r = {"name": name, **run(module, a)}
        if module == "bench.step":
            key = (r["config"], r["precision"])
            if r["layout"] == "reference":
                base[key] = r["forward_backward_ms"]
            elif key in base or (r["config"], "fp32") in base:
                r["vs_base"] = (
                    base.get(key, base.get((r["config"], "fp32"))) / r["forward_backward_ms"]
                )
        elif module == "bench.chat":
            r["vs_base"] = r["decode_ratio"]
        rows.append(r)
    data = [{"name": n, **run(m, q if args.quick else a)} for n, m, a, q in DATA]
    serve = run("bench.serve", SERVE[1] if args.quick else SERVE[0])
    text = table(rows) + "\n\n" + data_table(data) + "\n\n" + serve_table(serve)
    print(text)
    Path(args.out).write_text(
        json.dumps(
            {"rows": rows, "data": data, "serve": serve, "wall_seconds": time.time() - start},
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
