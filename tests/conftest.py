"""Shared fixtures: tiny constants, a seed, a tiny random model, the conformance fixture dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
