"""A folder laid out as the README says a user's is: the demo's saved runs under runs/demo/
(and the MoAI study's under runs/moai_study/), the files its examples name, the repo's configs.

The saved runs are the tiny random model saved at each path the README names: what `make
demo` would leave there, untrained, so every command runs through the code a user's does,
in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.conftest import ROOT

RUNS = ["demo/stage0", "demo/stage1", "demo/stage2", "demo/stage3", "demo/stage4"]
RUNS += ["demo/stage5", "moai_study/sam", "moai_study/stage0"]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A user's folder: runs/demo/stage*/final, the example files, the repo's configs and
    examples where the README's relative paths look for them."""
    from onellm import OneLLM

    ws = tmp_path_factory.mktemp("readme")
    OneLLM.from_config("tiny").save_pretrained(ws / f"runs/{RUNS[0]}/final")
    for run in RUNS[1:]:
        shutil.copytree(ws / f"runs/{RUNS[0]}/final", ws / f"runs/{run}/final")
    for name in ("configs", "examples"):
        (ws / name).symlink_to(ROOT / name)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for name in ("cat.png", "shapes.png"):
        Image.fromarray(image).save(ws / name)
    sf.write(ws / "meow.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    np.save(ws / "heat.npy", rng.random((32, 32)).astype(np.float32))
    laion(ws / "laion", rng)
    return ws


def laion(folder: Path, rng, n: int = 6) -> None:
    """A small image/caption manifest where the README's data-at-scale commands look."""
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        pixels = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img/{i}.jpg")
        lines.append(f'{{"modality": "image", "input": "img/{i}.jpg", "caption": "a red circle"}}')
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
