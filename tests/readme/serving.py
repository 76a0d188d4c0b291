"""The README's serving blocks against real servers: `onellm serve` as written (in its own
process, on a free port), the curl line and the openai client on it, and the client once
more on a server whose replies hold a `<seg>` (the tiny random model rarely emits one)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.readme.blocks import inside, onellm_argv
from tests.serve.conftest import LiveServer, free_port

README_PORT = "8000"


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"onellm serve exited {proc.returncode}: {proc.stdout.read()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return json.load(r)
        time.sleep(0.3)
    raise AssertionError(f"onellm serve did not answer on port {port} within {timeout} s")


@contextlib.contextmanager
def serving(argv: list[str], ws: Path):
    """`onellm ARGV` in its own process on a free port (the README's port may be taken)."""
    port = free_port()
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    cmd = [sys.executable, "-m", "onellm.cli", *argv]
    proc = subprocess.Popen(
        cmd, cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield port, wait_healthy(proc, port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def check_serve_commands(cmds: list[str], ws: Path) -> None:
    """Each `onellm serve` line starts a server that lists one model."""
    for command in cmds:
        argv = onellm_argv(command)
        assert argv is not None and argv[0] == "serve", command
        if "--load-in-4bit" in argv and not torch.cuda.is_available():
            continue  # NF4 is bitsandbytes on CUDA; tests/test_gpu.py
        if any(a.startswith("/models/") for a in argv):
            continue  # real weights at the README's example path
        with serving(argv, ws) as (_, models):
            assert len(models["data"]) == 1, models


def check_openai_example(curl: str, client: str, ws: Path, serve_argv: list[str]) -> None:
    """The curl line and the openai client against `onellm serve` as written; then the
    client against a server whose replies hold a mask."""
    with serving(list(serve_argv), ws) as (port, models):
        if shutil.which("curl"):
            out = subprocess.run(
                ["bash", "-c", curl.replace(README_PORT, str(port))],
                cwd=ws,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert json.loads(out)["choices"][0]["message"]["role"] == "assistant", out
        names = run_client(client, ws, port)
        assert names["masks"] == [], "the tiny random model emitted a <seg>"
    with seg_server(ws) as port:
        names = run_client(client, ws, port)
        assert names["masks"] and names["masks"][0]["token"] == "<seg>", names["masks"]


def run_client(client: str, ws: Path, port: int) -> dict:
    pytest.importorskip("openai", reason="the README's client example needs openai (dev extra)")
    namespace: dict = {"__name__": "readme"}
    with inside(ws):
        exec(client.replace(README_PORT, str(port)), namespace)
    return namespace


@contextlib.contextmanager
def seg_server(ws: Path):
    """The demo's saved model behind the same app, every reply's second token `<seg>`."""
    from transformers import LogitsProcessorList

    from onellm import OneLLM
    from onellm.serve.app import create_app
    from tests.conftest import ForceAt

    run = "runs/demo/stage4/final"  # served under the path, as `onellm serve` names it
    model = OneLLM.from_pretrained(ws / run)
    force = LogitsProcessorList([ForceAt(model.outputs.token_ids["seg"], 1)])
    app = create_app(model, model_id=run, ui=False, generate_kwargs={"logits_processor": force})
    server = LiveServer(app)
    try:
        yield server.port
    finally:
        server.close()
