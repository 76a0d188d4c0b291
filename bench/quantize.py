"""8-bit LLM weights on the CPU (torchao int8 weight-only) against fp32, same saved model:
the largest logit error as a share of the largest logit, greedy next-token agreement, and the
LLM's weight bytes (quantised tensors counted by what they store).

    .venv/bin/python -m bench.quantize [--config bench/configs/small.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

from onellm import OneLLM
from onellm.modeling.quantize import weight_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/small.yaml")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        OneLLM.from_config(args.config).save_pretrained(d)
        ref = OneLLM.from_pretrained(d).eval()
        q = OneLLM.from_pretrained(d, quantization="8bit").eval()
    ids = torch.randint(3, 400, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.llm(input_ids=ids).logits, q.llm(input_ids=ids).logits
    result = {
        "bench": "quantize",
        "config": args.config,
        "quantization": str(q.quantization),
        "max_abs_logit_error": float((a - b).abs().max()),
        "relative_logit_error": float((a - b).abs().max() / a.abs().max()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "llm_mb_fp32": weight_bytes(ref.llm) / 2**20,
        "llm_mb_8bit": weight_bytes(q.llm) / 2**20,
    }
    result["memory_ratio"] = result["llm_mb_8bit"] / result["llm_mb_fp32"]
    print(
        f"{args.config}: logits within {100 * result['relative_logit_error']:.2f}% of the "
        f"largest, top-1 agreement {100 * result['top1_agreement']:.1f}%, LLM "
        f"{result['llm_mb_fp32']:.1f} -> {result['llm_mb_8bit']:.1f} MB "
        f"({100 * result['memory_ratio']:.0f}%)",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
