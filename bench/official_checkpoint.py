"""A checkpoint in the official OneLLM layout (csuhan/OneLLM's `llma.`-prefixed keys) with
random values, at any size; and, run as a script, `onellm convert` measured on one at
OneLLM-7B's real shapes:

    python -m bench.official_checkpoint [--size 7b|small] [--dir /tmp/onellm-official]

It writes DIR/consolidated.00-of-01.pth once (bf16, ~15 GB at 7b), converts it with
`onellm convert` in a child process and loads the result with `OneLLM.from_pretrained` in
another, and prints each one's wall time and peak RSS against the checkpoint's size (the
goal: peak at most 1.2x the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

# OneLLM-7B: Llama-2-7B (4096 wide, 32 layers, FFN 11008), CLIP ViT-L/14 at 224, three
# projection experts of 8 blocks at width 1024 with 30 queries, fMRI from 15724 voxels
ONELLM_7B = dict(
    dim=4096,
    layers=32,
    vocab=32000,
    width=1024,
    clip_layers=24,
    patch=14,
    grid=16,
    experts=3,
    expert_layers=8,
    queries=30,
    voxels=15724,
    fmri_tokens=8,
    multiple_of=256,
)
SMALL = dict(ONELLM_7B, dim=512, layers=4, vocab=8000, clip_layers=4)
HEADS = {"7b": (32, 16), "small": (8, 16)}  # LLM and CLIP heads: not in the shapes


def official_shapes(
    *,
    dim,
    layers,
    vocab,
    width,
    clip_layers,
    patch,
    grid,
    experts,
    expert_layers,
    queries,
    voxels,
    fmri_tokens,
    multiple_of=32,
) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in OneLLM's key layout at the given sizes (as its Transformer
    makes them), keys without the `llma.` prefix."""
    m = multiple_of  # Llama-2 rounds its FFN width up to a multiple of 256; the tiny tests, 32
    ffn = lambda d: m * ((int(8 * d / 3) + m - 1) // m)  # noqa: E731
    sd = {
        "tok_embeddings.weight": (vocab, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
    }
    for i in range(layers):
        for w in "qkvo":
            sd[f"layers.{i}.attention.w{w}.weight"] = (dim, dim)
        sd |= {
            f"layers.{i}.feed_forward.w1.weight": (ffn(dim), dim),
            f"layers.{i}.feed_forward.w3.weight": (ffn(dim), dim),
            f"layers.{i}.feed_forward.w2.weight": (dim, ffn(dim)),
            f"layers.{i}.attention_norm.weight": (dim,),
            f"layers.{i}.ffn_norm.weight": (dim,),
        }
    v = "clip.visual."
    sd |= {
        v + "conv1.weight": (width, 3, patch, patch),
        v + "class_embedding": (width,),
        v + "positional_embedding": (grid * grid + 1, width),
        v + "proj": (width, 16),
        "clip.logit_scale": (),
        "clip.text_projection": (width, 16),
    }
    for n in ("ln_pre", "ln_post"):
        sd |= {f"{v}{n}.weight": (width,), f"{v}{n}.bias": (width,)}
    for j in range(clip_layers):
        b = f"{v}transformer.resblocks.{j}."
        sd |= {
            b + "attn.in_proj_weight": (3 * width, width),
            b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width),
            b + "attn.out_proj.bias": (width,),
            b + "mlp.c_fc.weight": (4 * width, width),
            b + "mlp.c_fc.bias": (4 * width,),
            b + "mlp.c_proj.weight": (width, 4 * width),
            b + "mlp.c_proj.bias": (width,),
        }
        for n in ("ln_1", "ln_2"):
            sd |= {f"{b}{n}.weight": (width,), f"{b}{n}.bias": (width,)}
    for e in range(experts):
        for l in range(expert_layers):  # noqa: E741
            b = f"resample_layers.{e}.{l}."
            for w in "qkvo":
                sd[b + f"attention.w{w}.weight"] = (width, width)
            sd |= {
                b + "feed_forward.w1.weight": (ffn(width), width),
                b + "feed_forward.w3.weight": (ffn(width), width),
                b + "feed_forward.w2.weight": (width, ffn(width)),
                b + "attention_norm.weight": (width,),
                b + "ffn_norm.weight": (width,),
            }
    sd |= {
        "conv1.audio.weight": (width, 1, 16, 16),
        "conv1.audio.bias": (width,),
        "positional_embedding.audio": (1213, width),
        "conv1.imu.weight": (width, 6, 10),
        "positional_embedding.imu": (392, width),
        "conv1.fmri.weight": (fmri_tokens * width, voxels),
        "conv1.fmri.bias": (fmri_tokens * width,),
        "positional_embedding.fmri": (fmri_tokens + 1, width),
        "conv1.point.conv1.weight": (width, 6, 1, 1),
        "conv1.point.conv1.bias": (width,),
        "positional_embedding.point": (1025, width),
    }
    for m in ["image", "video", "audio", "point", "rgbd", "rgbn", "fmri", "imu"]:
        sd |= {
            f"resample_tokens.{m}": (1, queries, width),
            f"routers.{m}.fc1.weight": (4 * width, width),
            f"routers.{m}.fc1.bias": (4 * width,),
            f"routers.{m}.fc2.weight": (experts, 4 * width),
            f"routers.{m}.fc2.bias": (experts,),
            f"start_tag.{m}": (1, 1, dim),
            f"end_tag.{m}": (1, 1, dim),
        }
        for p, out in (("clip_proj1", width), ("clip_proj2", dim)):
            sd |= {
                f"{p}.{m}.0.weight": (out, width),
                f"{p}.{m}.0.bias": (out,),
                f"{p}.{m}.1.weight": (out,),
                f"{p}.{m}.1.bias": (out,),
            }
    return sd


def official_state_dict(
    *, dtype: torch.dtype = torch.float32, seed: int = 1, **sizes
) -> dict[str, torch.Tensor]:
    """Random tensors (std 0.05) in OneLLM's key layout at `sizes` (`official_shapes`)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in official_shapes(**sizes).items():
        out[f"llma.{k}"] = (torch.randn(s, generator=g) * 0.05).to(dtype)
    return out


def child(argv: list[str]) -> tuple[float, float]:
    """Run `argv` in a child process: its wall seconds and the peak RSS in GiB it printed
    (`peak memory X GiB`: its own ru_maxrss; the children's maximum would mix the two)."""
    start = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    print(out.strip())
    return wall, float(re.search(r"peak memory ([\d.]+) GiB", out).group(1))


# load the converted run and answer one image: the 7B run works, not only loads
LOAD = """
import resource, sys, time
import torch
from onellm import OneLLM
t = time.perf_counter()
m = OneLLM.from_pretrained(sys.argv[1])
loaded = time.perf_counter() - t
r = m.chat(torch.rand(3, 224, 224), modality="image", prompt="What is this?", max_new_tokens=2)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"from_pretrained {loaded:.0f} s, one chat {time.perf_counter() - t - loaded:.0f} s "
      f"({len(r.token_ids)} tokens), peak memory {peak:.1f} GiB")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("7b", "small"), default="7b")
    ap.add_argument("--dir", default="/tmp/onellm-official")
    a = ap.parse_args()
    d = Path(a.dir) / a.size
    d.mkdir(parents=True, exist_ok=True)
    ckpt, out = d / "consolidated.00-of-01.pth", d / "converted"
    sizes = ONELLM_7B if a.size == "7b" else SMALL
    if not ckpt.is_file():
        start = time.perf_counter()
        torch.save({"model": official_state_dict(dtype=torch.bfloat16, **sizes)}, ckpt)
        print(f"wrote {ckpt} in {time.perf_counter() - start:.0f} s")
    size = ckpt.stat().st_size / 2**30
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    llm_heads, clip_heads = HEADS[a.size]
    exe = str(Path(sys.executable).parent / "onellm")
    convert = [exe, "convert", str(ckpt), str(out), "--llm-heads", str(llm_heads)]
    convert += ["--encoder-heads", str(clip_heads), "--dtype", "bfloat16"]
    c_wall, c_peak = child(convert)
    l_wall, l_peak = child([sys.executable, "-c", LOAD, str(out)])
    rows = {
        "checkpoint_gib": round(size, 2),
        "convert": {"seconds": round(c_wall, 1), "peak_rss_gib": round(c_peak, 2)},
        "from_pretrained": {"seconds": round(l_wall, 1), "peak_rss_gib": round(l_peak, 2)},
        "convert_peak_over_checkpoint": round(c_peak / size, 2),
    }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
