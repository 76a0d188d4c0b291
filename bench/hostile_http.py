"""The HTTP side of the hostile-traffic cases against `onellm serve configs/tiny.yaml
--allow-dir DIR` in its own process (UI mounted), on 127.0.0.1 only: for each case its
status, its time and the server's RSS (peak during the request above the RSS before it,
and what stayed after; the peak is reset per case through /proc/PID/clear_refs).

    python -m bench.hostile_http            # prints a table (markdown)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from bench.serve import HOST, free_port
from bench.serve import start as serve_process

MIB = 2**20


def start(port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return serve_process("configs/tiny.yaml", port, *extra, env=env, timeout=180)


def memory(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def raw(port: int, head: str, body=b"", chunks=None, read_timeout: float = 60) -> str:
    """One request over a socket: `head` (CRLF lines), then `body`, or `chunks` sent with
    chunked encoding (stopped when the server closes); the status line of the answer."""
    with socket.create_connection((HOST, port), timeout=read_timeout) as s:
        s.sendall(head.encode() + b"\r\n")
        try:
            if body:
                s.sendall(body)
            for piece in chunks or ():
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if chunks is not None:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before all of it was sent
        answer = s.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next(
            (
                int(x.split(b":")[1])
                for x in head.lower().split(b"\r\n")
                if x.startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length and (more := s.recv(65536)):
            body += more
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    return f"{status} | {body[:160].decode('latin-1')}"


def cases(port: int, ui_body) -> dict:
    h = f"Host: {HOST}:{port}"
    json_head = "POST {route} HTTP/1.1\r\n" + h + "\r\nContent-Type: application/json\r\n"

    def post(route: str, body: bytes, kind="application/json", extra="") -> str:
        head = f"POST {route} HTTP/1.1\r\n{h}\r\nContent-Type: {kind}\r\n{extra}"
        return raw(port, head + f"Content-Length: {len(body)}\r\n", body)

    many = b"[" + b"[]," * (8 * MIB) + b"[]]"  # 24 MiB of []
    under = b'{"messages": [' + b"{}," * 99_000 + b"{}]}"  # 0.6 MB, just under the cap
    return {
        "a good request (1 token), /v1": lambda: post(
            "/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
        ),
        "UI image slot {path: /etc/passwd}": lambda: post(
            "/gradio_api/call/respond", ui_body("/etc/passwd")
        ),
        "UI image slot https URL": lambda: post(
            "/gradio_api/call/respond", ui_body("https://example.com/a.png")
        ),
        "UI GET file=/etc/passwd": lambda: raw(
            port, f"GET /gradio_api/file=/etc/passwd HTTP/1.1\r\n{h}\r\n"
        ),
        "UI GET file=https://example.com/": lambda: raw(
            port, f"GET /gradio_api/file=https://example.com/ HTTP/1.1\r\n{h}\r\n"
        ),
        "96 MiB declared, UI queue/join": lambda: raw(
            port,
            json_head.format(route="/gradio_api/queue/join") + f"Content-Length: {96 * MIB}\r\n",
        ),
        "96 MiB chunked, UI queue/join": lambda: raw(
            port,
            json_head.format(route="/gradio_api/queue/join") + "Transfer-Encoding: chunked\r\n",
            chunks=(b"[" * MIB for _ in range(96)),
        ),
        "96 MiB chunked, /v1": lambda: raw(
            port,
            json_head.format(route="/v1/chat/completions") + "Transfer-Encoding: chunked\r\n",
            chunks=(b"[" * MIB for _ in range(96)),
        ),
        "JSON 10,000 deep, /v1": lambda: post(
            "/v1/chat/completions", b"[" * 10_000 + b"]" * 10_000
        ),
        "JSON 10,000 deep, UI": lambda: post(
            "/gradio_api/queue/join", b"[" * 10_000 + b"]" * 10_000
        ),
        "5,000-digit integer, /v1": lambda: post(
            "/v1/chat/completions", b'{"max_tokens": ' + b"9" * 5000 + b"}"
        ),
        "24 MiB of [], /v1": lambda: post("/v1/chat/completions", many),
        "24 MiB of [], UI": lambda: post("/gradio_api/queue/join", many),
        "99,000 {} (0.3 MB, under the cap), /v1": lambda: post("/v1/chat/completions", under),
        "99,000 {} (0.3 MB, under the cap), UI": lambda: post("/gradio_api/queue/join", under),
        "text/plain POST, /v1": lambda: post(
            "/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi"}]}', "text/plain"
        ),
        "cross-site text/plain, foreign Host+Origin": lambda: raw(
            port,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example"
            "\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
            b"{}",
        ),
        "foreign Origin, JSON": lambda: post(
            "/v1/chat/completions", b"{}", extra="Origin: http://evil.example\r\n"
        ),
        "content: 5 (pydantic)": lambda: post(
            "/v1/chat/completions", b'{"messages":[{"role":"user","content":5}]}'
        ),
        "Gradio run-history route": lambda: raw(
            port, f"GET /gradio_api/run-history/buckets HTTP/1.1\r\n{h}\r\n"
        ),
    }


def ui_body_for(port: int):
    cfg = httpx.get(f"http://{HOST}:{port}/config").json()
    comps = {c["id"]: c for c in cfg["components"]}
    dep = next(d for d in cfg["dependencies"] if d.get("api_name") == "respond")

    def body(path: str) -> bytes:
        data = []
        for cid in dep["inputs"]:
            c = comps[cid]
            value = {"textbox": "hi", "slider": 2}.get(c["type"])
            if c["props"].get("elem_id") == "input-image":
                value = {"path": path, "meta": {"_type": "gradio.FileData"}}
            data.append(value)
        return json.dumps({"data": data}).encode()

    return body


def idle(port: int, opening: bytes) -> str:
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(opening)
        start = time.monotonic()
        got = s.recv(100)
        return f"closed after {time.monotonic() - start:.1f} s ({got[:12]!r})"


def main() -> None:
    port = free_port()
    allowed = tempfile.mkdtemp(prefix="onellm-allowed-")
    proc = start(port, "--allow-dir", allowed)
    rows = []
    try:
        ui_body = ui_body_for(port)
        for name, case in cases(port, ui_body).items():
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak (VmHWM) to the current RSS
            before = memory(proc.pid)["VmRSS"]
            t = time.perf_counter()
            answer = case()
            took = time.perf_counter() - t
            time.sleep(0.3)
            after = memory(proc.pid)
            rows.append((name, answer, took, after["VmHWM"] - before, after["VmRSS"] - before))
        for name, opening in (("idle connection", b""), ("slow header", b"GET / HTTP/1.1\r\nHo")):
            rows.append((name, idle(port, opening), 0, 0, 0))
    finally:
        proc.terminate()
        proc.wait(30)
    print("| case | answer | time s | peak RSS added MB | RSS kept MB |\n|---|---|---|---|---|")
    for name, answer, took, peak, kept in rows:
        print(f"| {name} | {answer.replace('|', '/')} | {took:.2f} | {peak:+.1f} | {kept:+.1f} |")
    keyed = free_port()
    proc = start(keyed, "--api-key", "sesame")
    ask = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{keyed}\r\nContent-Type: application/json\r\nContent-Length: {len(ask)}\r\n"
    try:
        print("\nwith --api-key:")
        for name, extra in (
            ("no key", ""),
            ("wrong key", "Authorization: Bearer x\r\n"),
            ("the key", "Authorization: Bearer sesame\r\n"),
        ):
            print(f"- {name}: {raw(keyed, head + extra, ask)[:120]}")
        page = f"GET / HTTP/1.1\r\nHost: {HOST}:{keyed}\r\nAccept: text/html\r\n"
        print(f"- GET / (a browser): {raw(keyed, page)}")
    finally:
        proc.terminate()
        proc.wait(30)
    exposed = subprocess.run(
        [sys.executable, "-m", "onellm.cli", "serve", "configs/tiny.yaml", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "ONELLM_API_KEY"},
    )
    print(
        f"\n--host 0.0.0.0 without a key: exit {exposed.returncode}: {exposed.stderr.strip()[-200:]}"
    )


if __name__ == "__main__":
    main()
