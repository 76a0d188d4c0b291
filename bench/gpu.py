"""The alignment step on a GPU: samples/s and MFU against the GPU's bf16 dense peak.

    .venv/bin/python -m bench.gpu [--out bench/gpu_results.json]

Rows: the 'small' config and OneLLM-7B's encoder + UPM at their real sizes with the LLM cut
to 2 layers (bench/configs/onellm7b-upm.yaml), each in bf16 autocast over fp32 weights (what
`precision: bf16` trains with) and in bf16 weights. The step is bench/step.py's (stage 1:
image batch, caption labels, only `projection.*` trains). FLOPs are counted by torch's
FlopCounterMode; MFU divides the achieved rate by the datasheet's dense bf16 peak of the
GPU found (and, beside it, by an 8192^3 bf16 matmul measured in the same process).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.step import measure

# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s
DATASHEET_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}

ROWS = [  # (name, config, batch, precision, weights dtype)
    ("small, bf16 autocast", "bench/configs/small.yaml", 64, "bf16", None),
    ("small, bf16 weights", "bench/configs/small.yaml", 64, "fp32", "bfloat16"),
    ("7B UPM + 2-layer LLM, bf16 autocast", "bench/configs/onellm7b-upm.yaml", 32, "bf16", None),
    (
        "7B UPM + 2-layer LLM, bf16 weights",
        "bench/configs/onellm7b-upm.yaml",
        32,
        "fp32",
        "bfloat16",
    ),
]


def datasheet_peak(name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/gpu_results.json")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA GPU here (the CPU table is `make bench`)")
    name = torch.cuda.get_device_name()
    peak = datasheet_peak(name)
    rows = []
    print(
        f"{name}, torch {torch.__version__}, datasheet bf16 peak {peak / 1e12:.0f} TFLOP/s"
        if peak
        else f"{name}: not in the datasheet table"
    )
    header = f"{'row':<38}{'batch':>6}{'ms/step':>9}{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'MFU(mm)':>9}"
    print(header)
    for label, config, batch, precision, dtype in ROWS:
        torch.cuda.reset_peak_memory_stats()
        r = measure(
            config,
            batch=batch,
            text_tokens=32,
            precision=precision,
            runs=args.runs,
            warmup=3,
            device="cuda",
            dtype=dtype,
        )
        achieved = r["achieved_gflops"] * 1e9
        r.update(
            row=label,
            gpu=name,
            datasheet_peak=peak,
            mfu_datasheet=achieved / peak if peak else None,
            max_memory_gb=torch.cuda.max_memory_allocated() / 2**30,
        )
        rows.append(r)
        mfu = f"{100 * r['mfu_datasheet']:.0f}%" if peak else "-"
        print(
            f"{label:<38}{batch:>6}{r['forward_backward_ms']:>9.1f}{r['samples_per_s']:>11.0f}"
            f"{achieved / 1e12:>9.1f}{mfu:>7}{100 * r['mfu']:>8.0f}%"
        )
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
