"""Replay: the parent's sources join a stage at the ratio it states, off by flag, and the
demo's stages (which name every earlier source themselves) replay nothing."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from PIL import Image

from onellm.data import shapes
from onellm.data.loader import choose_source
from onellm.errors import ConfigError
from onellm.training.lineage import Lineage
from onellm.training.recipe import Recipe
from onellm.training.replay import plan_replay, replay_line, replay_reasons
from onellm.training.stage import ReplayConfig, load_stage
from tests.conftest import ROOT

STAGES = ROOT / "configs" / "stages"
DEMO = ["stage0_pretrain", "stage1_image", "stage2_video_audio_point"]
DEMO += ["stage3_depth_normal_imu_fmri", "stage4_instruct"]


def sources_of(cfg):
    """A stage's sources as trained_on.json keeps them."""
    out = {}
    for key, s in cfg.data.items():
        text_only = s.task == "lm" and s.modality is None
        out[key] = dataclasses.asdict(s) | {"modality": None if text_only else s.modality or key}
    return out


def lineage_of(*names):
    return Lineage(
        [{"name": n, "sources": sources_of(load_stage(STAGES / f"{n}.yaml"))} for n in names]
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mine")
    lines = []
    for i, scene in enumerate(shapes.sample("image", 4, split="train", seed=3)):
        Image.fromarray(scene.input).save(folder / f"{i}.png")
        lines.append({"modality": "image", "input": f"{i}.png", "caption": f"my picture {i}"})
    (folder / "my.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "my.jsonl"


def finetune(manifest, *extra):
    return load_stage(
        STAGES / "finetune.yaml",
        [f"data.image.data={manifest}", "eval.data={}", "init_from=runs/x/final", *extra],
    )


def test_the_parents_sources_join_at_the_stated_ratio(manifest):
    parent = lineage_of("stage0_pretrain", "stage1_image", "stage2_video_audio_point")
    added, info = plan_replay(finetune(manifest, "replay.ratio=0.3"), parent)
    # every captioned source of the parent (stage 0's lm and clip teach no captions)
    assert sorted(added) == ["replay_audio", "replay_image", "replay_point", "replay_video"]
    assert added["replay_image"].data == "synthetic" and added["replay_image"].pool == 1024
    assert info["ratio"] == 0.3 and info["sources"]["replay_point"]["modality"] == "point"
    # half of the replay for image, the modality the stage trains; half for the others
    total = 0.3 / 0.7
    assert added["replay_image"].weight == pytest.approx(total / 2)
    assert added["replay_video"].weight == pytest.approx(total / 6)
    assert info["sources"]["replay_image"]["share"] == pytest.approx(0.15)
    assert replay_reasons(info, parent)["image"] == [
        "the parent's image data replayed in 15% of the steps (replay.ratio 0.3)"
    ]
    weights = {"image": 1.0} | {k: s.weight for k, s in added.items()}
    steps = Counter(choose_source(weights, seed=0, step=s) for s in range(20000))
    replayed = sum(n for k, n in steps.items() if k.startswith("replay_")) / 20000
    assert replayed == pytest.approx(0.3, abs=0.01)
    assert "30% of the steps" in replay_line("finetune", info)
    assert "audio, image, point, video; shapes world" in replay_line("finetune", info)


def test_replay_is_off_by_flag_and_on_by_true(manifest):
    parent = lineage_of("stage1_image")
    assert plan_replay(finetune(manifest, "replay=false"), parent) == (
        {},
        {"note": "off (replay: false)"},
    )
    added, info = plan_replay(finetune(manifest, "replay=true"), parent)
    assert list(added) == ["replay_image"] and info["ratio"] == ReplayConfig.ratio


def test_a_parents_manifest_replays_while_it_exists(manifest, tmp_path):
    gone = tmp_path / "gone.jsonl"
    parent = Lineage(
        [
            {
                "name": "mine",
                "sources": {
                    "a": {"modality": "image", "task": "caption", "data": str(manifest)},
                    "b": {"modality": "audio", "task": "caption", "data": str(gone)},
                },
            }
        ]
    )
    cfg = load_stage(STAGES / "stage1_image.yaml", ["init_from=runs/x/final"])
    added, info = plan_replay(cfg, parent)
    assert list(added) == ["replay_image_my"] and added["replay_image_my"].data == str(manifest)
    assert info["note"] == f"not replayed (file gone): audio from {gone}"


def test_the_demos_stages_replay_nothing():
    for i in range(1, len(DEMO)):
        cfg = load_stage(STAGES / f"{DEMO[i]}.yaml")
        added, info = plan_replay(cfg, lineage_of(*DEMO[:i]))
        assert added == {}, DEMO[i]
        assert info["note"].startswith("nothing to replay")


def test_a_stage_counts_its_replayed_samples_at_the_ratio(manifest, tmp_path):
    """From a saved stage-1 model: the recipe's steps draw the parent's shapes-world images
    in `ratio` of the steps and the manifest in the rest; each batch is of its source."""
    parent = load_stage(
        STAGES / "stage1_image.yaml",
        ["init_from=configs/tiny.yaml", f"output_dir={tmp_path / 'p'}", "steps=1"]
        + ["batch_size=2", "eval.modalities=[]", "data.image.pool=8"],
    )
    Recipe(parent, quiet=True).setup().save()
    cfg = finetune(
        manifest,
        f"init_from={tmp_path / 'p' / 'final'}",
        f"output_dir={tmp_path / 'ft'}",
        "replay.ratio=0.25",
        "batch_size=2",
        "steps=400",
    )
    r = Recipe(cfg, quiet=True).setup()
    assert set(r.cfg.data) == {"image", "replay_image"}
    assert r.cfg.data["replay_image"].weight == pytest.approx(1 / 3)
    counts = Counter(r.source_for(s) for s in range(400))
    assert counts["replay_image"] / 400 == pytest.approx(0.25, abs=0.05)
    mine = {f"my picture {i}" for i in range(4)}
    for step in range(6):
        key = r.source_for(step)
        src = r.sources[key]
        captions = {src[p].caption for p in range(step * 2, step * 2 + 2)}
        assert (captions <= mine) == (key == "image"), (key, captions)
    started = [m for m in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert any('"event": "replay", "ratio": 0.25' in line for line in started)


def test_a_bad_ratio_is_refused():
    with pytest.raises(ConfigError, match=r"replay.ratio: expected a share in \(0, 1\), got 1.0"):
        load_stage(STAGES / "finetune.yaml", ["replay.ratio=1"])


def test_replayed_instruction_keeps_a_stated_share_of_plain_captions(manifest):
    parent = lineage_of("stage4_instruct")
    added, _ = plan_replay(finetune(manifest), parent)
    assert added["replay_audio"].task == "instruct"
    assert added["replay_audio"].caption_mix == ReplayConfig().caption_mix
    added, _ = plan_replay(finetune(manifest, "replay.caption_mix=null"), parent)
    assert added["replay_audio"].caption_mix == 0.25  # the parent's own
