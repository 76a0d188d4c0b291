"""Serving fixtures: files a user would upload, a logits processor that makes the tiny
random model emit an output token, and a live server on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

pytest.importorskip("fastapi", reason="onellm serve needs fastapi (pip install -e .)")


LOCAL = "http://127.0.0.1"  # TestClient's base URL: the server answers its own host names only


def b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """One file per kind of upload: png image, wav audio, npy point cloud, a depth pair."""
    d = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "x.png")
    sf.write(d / "x.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    np.save(d / "cloud.npy", rng.standard_normal((300, 6)).astype(np.float32))
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "rgb.png")
    np.save(d / "depth.npy", (rng.random((32, 32)) * 5).astype(np.float32))
    np.save(d / "normal.npy", rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32))
    np.save(d / "imu.npy", rng.standard_normal((80, 6)).astype(np.float32))
    np.save(d / "fmri.npy", rng.standard_normal(48).astype(np.float32))
    write_video(d / "clip.mp4", rng)
    return d


def write_video(path, rng, frames: int = 6) -> None:
    """A short H.264 clip, as a phone would upload one."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        c.mux(s.encode())


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
