"""Serving fixtures: a live server on 127.0.0.1 and the requests' helpers (the files a user
would upload are tests/conftest.py's `files`)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import b64, write_video  # noqa: F401 (serve tests import them from here)

pytest.importorskip("fastapi", reason="onellm serve needs fastapi (pip install -e .)")


LOCAL = "http://127.0.0.1"  # TestClient's base URL: the server answers its own host names only


def data_url(path, mime="image/png") -> str:
    return f"data:{mime};base64,{b64(path)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 in a thread, stopped on `close`."""

    def __init__(self, app, **config) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **config
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 60 s")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
