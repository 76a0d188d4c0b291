"""`onellm serve` (its own process, 127.0.0.1 only) against clients that leave and prompts
that cannot fit (issue 36): how long a 1-token request waits on an idle server, after a
client abandoned a 400-token stream, and behind a 400-token stream still being read; and
what a 1 MiB and a 4 MiB prompt cost the server (status, seconds, peak RSS added: VmHWM
after resetting it through /proc/PID/clear_refs, against VmRSS before).

    .venv/bin/python -m bench.abandoned_stream [--root DIR] [--repeats 3]

`--root` runs the server from another checkout of onellm (e.g. a `git archive` of an
older commit) to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time

import httpx

from bench.serve import HOST, free_port, rss_mb
from bench.serve import start as serve_process

LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400}
SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def start(root: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    return serve_process("configs/tiny.yaml", port, "--no-ui", cwd=root, env=env)


def short_wait(c: httpx.Client) -> float:
    t = time.perf_counter()
    c.post("/v1/chat/completions", json=SHORT).raise_for_status()
    return time.perf_counter() - t


def streamed(c: httpx.Client, leave: bool, ready: threading.Event) -> None:
    """Stream LONG; set `ready` at its first text; leave there (close) or read it all."""
    with c.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line and not ready.is_set():
                ready.set()
                if leave:
                    return


def behind_stream(url: str, leave: bool) -> float:
    """Seconds a 1-token request takes when sent just after a 400-token stream started
    (and was abandoned, if `leave`)."""
    ready = threading.Event()
    with httpx.Client(base_url=url, timeout=120) as a, httpx.Client(base_url=url, timeout=120) as b:
        t = threading.Thread(target=streamed, args=(a, leave, ready))
        t.start()
        ready.wait(60)
        if leave:
            t.join()  # the connection is closed
        wait = short_wait(b)
        t.join()
    time.sleep(2.0)  # let an abandoned row finish if it still runs, before the next case
    return wait


def hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def big_prompt(url: str, pid: int, size: int) -> dict:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    before = rss_mb(pid)
    body = {"messages": [{"role": "user", "content": "a" * size}], "max_tokens": 1}
    t = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    took = time.perf_counter() - t
    return {
        "bytes": size,
        "status": r.status_code,
        "seconds": round(took, 3),
        "peak_rss_added_mb": round(hwm_kb(pid) / 1024 - before, 1),
        "rss_after_added_mb": round(rss_mb(pid) - before, 1),
        "message": r.json().get("error", {}).get("message", "")[:160],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    port = free_port()
    proc = start(root, port)
    url = f"http://{HOST}:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            short_wait(c)  # warm up
            idle = [short_wait(c) for _ in range(args.repeats)]
        left = [behind_stream(url, leave=True) for _ in range(args.repeats)]
        live = [behind_stream(url, leave=False) for _ in range(args.repeats)]
        prompts = [big_prompt(url, proc.pid, s) for s in (2**20, 4 * 2**20)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {
        "root": root,
        "short_idle_s": round(statistics.median(idle), 3),
        "short_after_abandoned_400_stream_s": round(statistics.median(left), 3),
        "short_behind_live_400_stream_s": round(statistics.median(live), 3),
        "prompts": prompts,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
