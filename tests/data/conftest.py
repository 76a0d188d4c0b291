"""The data tests' shared pieces: a manifest of shapes-world images, and short stage-1 runs
reading a given `data`."""

import json

import pytest
from PIL import Image

from onellm.data import shapes
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT

STAGE1 = ROOT / "configs" / "stages" / "stage1_image.yaml"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """24 shapes-world images as PNG files and a JSONL manifest of their captions."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "img").mkdir()
    lines = []
    for i, scene in enumerate(shapes.sample("image", 24, split="train", seed=5)):
        Image.fromarray(scene.input).save(folder / "img" / f"{i}.png")
        lines.append({"modality": "image", "input": f"img/{i}.png", "caption": scene.caption})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def stage(tmp_path, name, data, *extra):
    return load_stage(
        STAGE1,
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / name}",
            "steps=6",
            "batch_size=4",
            "log_every=1",
            "eval.modalities=[]",
            f"data.image.data={data}",
            *extra,
        ],
    )


def run(cfg, resume=False):
    r = Recipe(cfg, resume=resume, quiet=True).setup()
    r.train()
    r.save()
    return r


def losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if m["event"] == "train"]
