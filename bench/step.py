"""Alignment training step: median ms of forward and of forward + backward, samples/s, MFU.

    .venv/bin/python bench/step.py --config bench/configs/reference-a.yaml
    .venv/bin/python bench/step.py --config bench/configs/small.yaml --precision bf16

The step is OneLLM's stage-1 step: image batch, caption tokens as labels, only the UPM side
(`projection.*`) trainable, CLIP and the LLM frozen. FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` on one step (matmuls, convolutions, attention);
MFU divides them by the step time and by the peak matmul FLOP/s measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import peak_matmul_flops, peak_rss_mb
from bench.onellm_layout import OneLLMLayout, active_layout
from onellm import OneLLM
from onellm.modeling.devices import autocast
from onellm.training.freezing import set_trainable


def step_inputs(model: OneLLM, batch: int, text_tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = model.modalities["image"].input_shape()
    image = torch.randn(batch, *shape, generator=g)
    ids = torch.randint(3, model.llm.config.vocab_size, (batch, text_tokens), generator=g)
    ids[:, 0] = model.llm.config.bos_token_id
    return image.to(model.device, model.dtype), ids.to(model.device)


def step_loss(model: OneLLM, image, ids) -> torch.Tensor:
    """The step's loss: ours, or the official OneLLM code's inside `OneLLMLayout`."""
    layout = active_layout(model)
    if layout is not None:
        return layout.loss(model, image, ids)
    ids, labels = model.layout.widen(ids, ["image"], ids)  # the block's run after BOS
    return model(ids, labels=labels, inputs={"image": image}).loss


def run_step(model: OneLLM, image, ids, precision: str, backward: bool) -> None:
    with autocast(model.device, precision):
        loss = step_loss(model, image, ids)
    if backward:
        loss.backward()
        for p in model.parameters():
            p.grad = None


def timed(fn, warmup: int, runs: int) -> float:
    """Median ms of `fn`, waiting for the GPU's queue where there is one."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(
    config: str,
    *,
    batch: int,
    text_tokens: int,
    precision: str,
    runs: int,
    warmup: int,
    overrides: tuple[str, ...] = (),
    layout: str = "onellm-lib",
    compile: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
) -> dict:
    torch.manual_seed(0)
    model = OneLLM.from_config(config, overrides, device=device, dtype=dtype).train()
    if compile:
        model.projection.experts.compile()  # compiled during the warm-up steps
    set_trainable(model, ["projection.*"])
    image, ids = step_inputs(model, batch, text_tokens)
    if layout == "reference":
        check_same_output(model, image, ids)
        with OneLLMLayout(model.projection):
            r = _measure(model, image, ids, batch, precision, runs, warmup)
    else:
        r = _measure(model, image, ids, batch, precision, runs, warmup)
    return {"config": config, "layout": layout, "compiled": compile, **r}


@torch.no_grad()
def check_same_output(model: OneLLM, image: torch.Tensor, ids: torch.Tensor) -> None:
    """The baseline computes what the library computes (else the timing means nothing):
    the same modality tokens and the same loss, in fp32."""
    ours = (model.encode(image, "image"), step_loss(model, image, ids))
    with OneLLMLayout(model.projection):
        theirs = (model.encode(image, "image"), step_loss(model, image, ids))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def _measure(model, image, ids, batch, precision, runs, warmup) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fwd = lambda: run_step(model, image, ids, precision, backward=False)  # noqa: E731
    fwd_bwd = lambda: run_step(model, image, ids, precision, backward=True)  # noqa: E731
    fwd_ms = timed(fwd, warmup, runs)
    step_ms = timed(fwd_bwd, warmup, runs)
    flops = count_flops(fwd_bwd)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, model.dtype)
    peak = peak_matmul_flops(dtype, device=model.device)
    achieved = flops / (step_ms / 1000)
    return {
        "precision": precision,
        "batch": batch,
        "trainable_params": trainable,
        "total_params": total,
        "forward_ms": fwd_ms,
        "forward_backward_ms": step_ms,
        "samples_per_s": batch / (step_ms / 1000),
        "step_gflop": flops / 1e9,
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "mfu": achieved / peak,
        "device": str(model.device),
        "weights": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/reference-a.yaml")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (bench/gpu.py: the GPU table)"
    )
    ap.add_argument("--dtype", help="the weights' dtype (default: the config's)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--text-tokens", type=int, default=12)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--layout",
        choices=("onellm-lib", "reference"),
        default="onellm-lib",
        help="reference: the official OneLLM code's step on our weights (bench/onellm_layout.py)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the projection experts")
    ap.add_argument("overrides", nargs="*", help="model config key=value overrides")
    args = ap.parse_args()
    r = measure(
        args.config,
        batch=args.batch,
        text_tokens=args.text_tokens,
        precision=args.precision,
        runs=args.runs,
        warmup=args.warmup,
        overrides=tuple(args.overrides),
        layout=args.layout,
        compile=args.compile,
        device=args.device,
        dtype=args.dtype,
    )
    print(
        f"{args.config} {args.layout} {args.precision}: forward {r['forward_ms']:.1f} ms, forward+backward "
        f"{r['forward_backward_ms']:.1f} ms, {r['samples_per_s']:.1f} samples/s, "
        f"MFU {100 * r['mfu']:.0f}% of {r['peak_gflops']:.0f} GFLOP/s, RSS {r['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
