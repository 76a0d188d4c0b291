"""`onellm serve` under load, against 127.0.0.1 only: tokens/s of 1 client against 8 at once
(each client sends its requests one after another), and the server's memory over a
500-request soak. The server is `onellm serve` in its own process, as a user starts it.

    .venv/bin/python -m bench.serve [--config configs/tiny.yaml] [--requests 12] [--soak 500]

Every request asks about an image (a data URL) with `--max-tokens` new tokens; tokens/s is
the completion tokens the server reports over the wall time of the phase. The soak mixes
good, bad (a typed <seg>, an unreadable upload) and streamed requests from 4 clients and
reads the server's VmRSS every 100 requests. Traffic is bounded: a fixed count of requests,
each with a 120 s limit, to the loopback address only.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # the only address this benchmark sends to


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(
    config: str,
    port: int,
    *options: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.Popen:
    """`onellm serve CONFIG --host 127.0.0.1 --port PORT --device cpu OPTIONS` in its own
    process, as a user starts it, once it answers /health (the other serving benches too)."""
    cmd = [sys.executable, "-m", "onellm.cli", "serve", config, "--host", HOST]
    cmd += ["--port", str(port), "--device", "cpu", *options]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def image_url(seed: int) -> str:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request(i: int, max_tokens: int, images: list[str]) -> dict:
    content = [
        {"type": "image_url", "image_url": {"url": images[i % len(images)]}},
        {"type": "text", "text": f"What shape is in picture {i % 7}?"},
    ]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def throughput(url: str, clients: int, each: int, max_tokens: int, images: list[str]) -> dict:
    """`clients` threads, each sending `each` requests one after another -> tokens/s."""

    def client(k: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as c:
            tokens = 0
            for j in range(each):
                r = c.post("/v1/chat/completions", json=request(k * each + j, max_tokens, images))
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
            return tokens

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    wall = time.perf_counter() - t
    return {
        "clients": clients,
        "requests": clients * each,
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
    }


def soak(url: str, pid: int, n: int, images: list[str]) -> dict:
    """`n` requests (a third bad, a fifth of the good streamed) from 4 clients; RSS by 100s."""
    bad_image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]

    def one(i: int, c: httpx.Client) -> int:
        if i % 3 == 0:
            content = "<seg> here" if i % 2 else bad_image
            body = {"messages": [{"role": "user", "content": content}]}
        else:
            body = request(i, 8, images) | {"stream": i % 5 == 0}
        return c.post("/v1/chat/completions", json=body).status_code

    codes: list[int] = []
    rss = [rss_mb(pid)]
    with httpx.Client(base_url=url, timeout=120) as c0:
        for i in range(40):  # warm-up
            one(i, c0)
    rss.append(rss_mb(pid))
    for start_at in range(0, n, 100):
        chunk = min(100, n - start_at)

        def run(k: int, start_at=start_at, chunk=chunk) -> list[int]:
            with httpx.Client(base_url=url, timeout=120) as c:
                return [one(start_at + j, c) for j in range(k, chunk, 4)]

        with ThreadPoolExecutor(4) as pool:
            codes += [s for got in pool.map(run, range(4)) for s in got]
        rss.append(rss_mb(pid))
    return {
        "requests": len(codes),
        "status_counts": {str(s): codes.count(s) for s in set(codes)},
        "rss_mb_start": rss[0],
        "rss_mb_after_warmup": rss[1],
        "rss_mb_by_100": rss[2:],
        "rss_growth_mb": rss[-1] - rss[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml", help="a model YAML or a saved run")
    ap.add_argument("--requests", type=int, default=12, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=20)
    ap.add_argument("--soak", type=int, default=500, help="soak requests (0: none)")
    args = ap.parse_args()
    port = free_port()
    url = f"http://{HOST}:{port}"
    images = [image_url(s) for s in range(8)]
    proc = start(
        args.config,
        port,
        "--no-ui",
        "--max-batch",
        str(args.max_batch),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
    )
    try:
        throughput(url, 1, 3, args.max_tokens, images)  # warm-up
        one = throughput(url, 1, args.requests, args.max_tokens, images)
        many = throughput(url, args.clients, args.requests, args.max_tokens, images)
        batches = httpx.get(url + "/health").json()["batches"]
        soaked = soak(url, proc.pid, args.soak, images) if args.soak else None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "bench": "serve",
        "config": args.config,
        "one_client": one,
        "many_clients": many,
        "speedup": many["tokens_per_s"] / one["tokens_per_s"],
        "batch_sizes": batches,
        "soak": soaked,
        "load_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(
        f"1 client: {one['tokens_per_s']:.1f} tok/s; {args.clients} clients: "
        f"{many['tokens_per_s']:.1f} tok/s ({result['speedup']:.2f}x); batch sizes {batches}",
        file=sys.stderr,
    )
    if soaked:
        print(
            f"soak: {soaked['requests']} requests {soaked['status_counts']}, server RSS "
            f"{soaked['rss_mb_after_warmup']:.0f} -> {soaked['rss_mb_by_100'][-1]:.0f} MB",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
