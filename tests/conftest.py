"""Shared fixtures: tiny constants, a seed, a tiny random model, the conformance fixture dir."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FIXTURE_A = ROOT.parent / "shared" / "conformance" / "onellm-reference-A"


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random model, built once; tests that change it must restore it."""
    from onellm import OneLLM

    torch.manual_seed(0)
    return OneLLM.from_config(TINY).eval()


@pytest.fixture
def unchanged(tiny_model):
    """The tiny model, checked after the test to hold the same weights and no gradients."""
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    yield tiny_model
    after = tiny_model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"
    assert all(p.grad is None for p in tiny_model.parameters())


class ForceAt:
    """A logits processor: every row emits `token` as its new token number `step` (0-based;
    generate's ids hold the new tokens only when it starts from inputs_embeds)."""

    def __init__(self, token: int, step: int) -> None:
        self.token, self.step = token, step

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.step:
            scores[:] = float("-inf")
            scores[:, self.token] = 0
        return scores


class Steps:
    """A logits processor that counts generate's decoding steps (one per new token of a batch)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, input_ids, scores):
        self.n += 1
        return scores


def random_input(model, modality: str, batch: int = 2, frames: int = 2) -> torch.Tensor:
    """A random preprocessed batch of `modality` at the model's input shape."""
    shape = model.modalities[model.modality_key(modality)].input_shape()
    return torch.randn(batch, *(frames if s is None else s for s in shape))


def fixture_a() -> Path:
    if not (FIXTURE_A / "weights.safetensors").is_file():
        pytest.skip(f"conformance fixture not found at {FIXTURE_A} (it lives in ../shared)")
    return FIXTURE_A


def train_until_killed(recipe, step: int, monkeypatch) -> None:
    """Run `recipe.train()` until a KeyboardInterrupt at `step` (a crash mid-stage), then
    give `Recipe.train_step` back."""
    from onellm.training.recipe import Recipe

    real = Recipe.train_step

    def dies(self, s, prepared=None):
        if s == step:
            raise KeyboardInterrupt("killed")
        return real(self, s, prepared)

    monkeypatch.setattr(Recipe, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        recipe.train()
    monkeypatch.setattr(Recipe, "train_step", real)


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
