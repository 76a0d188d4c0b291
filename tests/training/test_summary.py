"""The end-of-stage summary: held-out figures beside the parent's, the floor warning and its
reason, the forgetting alarm, report.json and trained_on.json, evaluation on a held-out
manifest, and where the parent's figures come from (saved, or measured at the start)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from onellm.data import shapes
from onellm.errors import ConfigError
from onellm.training.lineage import TRAINED_ON, from_run, read_lineage
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from onellm.training.stage_eval import HeldOut
from onellm.training.summary import reasons_from, summarise
from tests.conftest import ROOT

STAGE1 = ROOT / "configs" / "stages" / "stage1_image.yaml"
SAVED = "saved with the parent"


def rows(**accuracy):
    return [
        {"modality": m, "task": "caption", "data": "synthetic", "n": 100, "seed": 1}
        | {"samples": 100, "accuracy": a}
        for m, a in accuracy.items()
    ]


def test_a_drop_over_the_limit_is_an_alarm_and_a_low_figure_a_warning():
    parent = {HeldOut("image"): (0.99, SAVED), HeldOut("audio"): (0.90, SAVED)}
    s = summarise(
        rows(image=0.0, audio=0.86, thermal=0.12),
        parent,
        floor=0.5,
        forgetting=5.0,
        reasons={"thermal": ["its captions use words the LLM never produced"]},
        drops={"image": ["replay was off (replay: false)"]},
    )
    # image fell 99 points: the alarm, with what replay did; audio fell 4: neither
    assert s.alarms == [
        "image shapes world captions: 99% -> 0% (-99 points); replay was off (replay: false)"
    ]
    # thermal is new (no parent figure) and under the floor: a warning with its reason
    assert s.warnings == [
        "thermal shapes world captions: 12% is under the 50% floor; "
        "its captions use words the LLM never produced"
    ]
    by = {r["modality"]: r for r in s.rows}
    assert by["image"]["forgot"] and "forgot" not in by["audio"] and by["thermal"]["low"]
    assert by["thermal"]["parent"] is None
    table = s.table("ft").splitlines()
    assert table[2].split() == [
        "image",
        "shapes",
        "world",
        "captions",
        "99%",
        "0%",
        "-99",
        "100",
    ] + ["FORGOT"]
    assert table[3].split()[4:7] == ["90%", "86%", "-4"]
    assert "FORGETTING ALARM: image shapes world captions 99% -> 0%; replay was off" in table[5]
    assert s.as_dict()["forgetting_alarms"] == s.alarms


def test_reasons_come_from_records_that_name_a_modality():
    records = [
        {"event": "train", "loss": 1.0},
        {"event": "vocabulary", "modality": "ecg", "reason": "'heartbeat' is new to the LLM"},
        {"event": "vocabulary", "modality": "ecg", "reason": "'heartbeat' is new to the LLM"},
    ]
    assert reasons_from(records) == {"ecg": ["'heartbeat' is new to the LLM"]}


# --------------------------------------------------------------------- a parent and its child
def short(tmp_path, name, *extra):
    return load_stage(
        STAGE1,
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / name}",
            "steps=2",
            "batch_size=4",
            "log_every=1",
            "eval.samples=3",
            "data.image.pool=16",
            *extra,
        ],
    )


def run(cfg):
    r = Recipe(cfg, quiet=True).setup()
    r.train()
    r.save()
    return r


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A short stage-1 run from the tiny config: a saved model trained on image captions."""
    tmp = tmp_path_factory.mktemp("parent")
    run(short(tmp, "stage1"))
    return tmp / "stage1" / "final"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A held-out manifest of three shapes-world images."""
    folder = tmp_path_factory.mktemp("held_out")
    lines = []
    for i, scene in enumerate(shapes.sample("image", 3, split="test", seed=9)):
        Image.fromarray(scene.input).save(folder / f"{i}.png")
        lines.append({"modality": "image", "input": f"{i}.png", "caption": scene.caption})
    (folder / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "test.jsonl"


def test_the_saved_model_keeps_what_it_was_trained_on_and_its_figures(parent):
    saved = json.loads((parent / TRAINED_ON).read_text())
    assert [s["name"] for s in saved["stages"]] == ["stage1-image"]
    assert (
        saved["stages"][0]["sources"]["image"] | {"pool": 16}
        == saved["stages"][0]["sources"]["image"]
    )
    assert saved["stages"][0]["sources"]["image"]["data"] == "synthetic"
    (row,) = saved["held_out"]
    assert row | {"n": 3, "seed": 1, "samples": 3, "task": "caption"} == row
    report = json.loads((parent.parent / "report.json").read_text())
    assert report["rows"][0]["parent"] is None  # from a model config: nothing to hold it to
    assert report["replay"] == {
        "note": "none: the stage starts from a model config, not a trained model"
    }


def test_an_older_run_is_read_from_its_stage_yaml_and_metrics(parent, tmp_path):
    lineage = from_run(parent.parent)
    assert lineage.sources()[("image", "synthetic")]["task"] == "caption"
    saved = json.loads((parent / TRAINED_ON).read_text())["held_out"]
    assert [r | {"stage": "stage1-image"} for r in lineage.held_out] == saved


def test_a_child_reports_its_manifest_and_the_parents_sets_and_alarms_on_a_drop(
    parent, held_out, tmp_path
):
    # the parent's saved image figure made 100%, so that the child's (a tiny random
    # model's ~0%) is a drop of the kind a fine-tune causes
    shutil.copytree(parent, tmp_path / "final")
    saved = json.loads((parent / TRAINED_ON).read_text())
    saved["held_out"][0]["accuracy"] = 1.0
    (tmp_path / "final" / TRAINED_ON).write_text(json.dumps(saved))
    assert read_lineage(str(tmp_path / "final")).held_out[0]["accuracy"] == 1.0
    cfg = short(
        tmp_path,
        "child",
        f"init_from={tmp_path / 'final'}",
        f"data.image.data={held_out}",  # trains on the manifest: the shapes world is replayed
        f"eval.data.image={held_out}",
        "eval.modalities=null",
        "replay=false",
    )
    r = run(cfg)
    report = json.loads((tmp_path / "child" / "report.json").read_text())
    by = {(x["modality"], x["data"]): x for x in report["rows"]}
    mine = by[("image", str(held_out))]
    assert mine["n"] == 3 and "seed" not in mine
    assert mine["parent_from"] == "the parent measured at the stage's start"
    shapes_row = by[("image", "synthetic")]  # the parent's set: evaluated though not trained
    assert shapes_row["parent"] == 1.0 and shapes_row["parent_from"].startswith(SAVED)
    assert shapes_row["accuracy"] < 0.95
    assert report["forgetting_alarms"][0].startswith("image shapes world captions: 100% ->")
    assert report["forgetting_alarms"][0].endswith("replay was off (replay: false)")
    assert report["replay"] == {"note": "off (replay: false)"}
    assert not any(k.startswith("replay_") for k in r.cfg.data)
    # the final eval record holds the manifest's result beside the shapes world's
    final = [m for m in read_metrics(tmp_path / "child") if m.get("final")][-1]
    assert final["manifests"]["image test.jsonl captions"]["data"] == str(held_out)
    child = json.loads((tmp_path / "child" / "final" / TRAINED_ON).read_text())
    assert [s["name"] for s in child["stages"]] == ["stage1-image", "stage1-image"]


def test_a_held_out_manifest_without_the_modality_is_refused(parent, held_out, tmp_path):
    cfg = short(tmp_path, "x", f"eval.data.audio={held_out}")
    with pytest.raises(ConfigError, match=r"eval.data.audio: expected records of audio"):
        Recipe(cfg, quiet=True).setup()


def test_a_stage_prints_its_tasks_held_out_metrics():
    from onellm.training.summary import output_lines

    lines = output_lines(
        "s5",
        {
            "seg": {"task": "seg", "n": 100, "seg_miou": 0.8987, "examples": [{"a": 1.0}]},
            "gen": {"task": "gen", "n": 50, "gen_color_accuracy": 1.0},
        },
    )
    assert lines == [
        "[s5] seg, 100 held out: seg_miou 0.899",
        "[s5] gen, 50 held out: gen_color_accuracy 1.000",
    ]
