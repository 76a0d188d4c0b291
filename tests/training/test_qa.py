"""Held-out question answering: the metric on hand-made predictions, a manifest's
conversations, the stage eval of instruction data, `onellm eval --task qa`, the demo's
second table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from onellm.checkpoints.weights import sha256
from onellm.inference.chat import ChatResponse
from onellm.training.evaluate import evaluate_qa, qa_metrics
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY


def test_qa_metrics_count_each_question_on_hand_made_predictions():
    answers = {
        "What colour is it?": ["red", "blue", "green"],
        "Where is it?": ["on the left", "at the top"],
    }
    preds = {
        "What colour is it?": ["Red.", "red", "green"],
        "Where is it?": ["on the left", "on the top"],
    }
    r = qa_metrics("image", answers, preds)
    assert r["by_question"] == {
        "What colour is it?": {"correct": 2, "n": 3},
        "Where is it?": {"correct": 1, "n": 2},
    }
    assert r["n"] == 5 and r["qa_accuracy"] == pytest.approx(3 / 5)


def answering(model, monkeypatch, right: set[str]):
    """model.chat answers the questions in `right` with the truth (read off the manifest
    below: the image's mean decides), anything else wrongly; records what it was asked."""
    asked = []

    def chat(inputs=None, modality=None, prompt=None, messages=None, **kw):
        if messages is not None:  # one conversation per input, in the message format
            inputs = [
                next(p[p["type"]] for p in c[0]["content"] if p["type"] != "text") for c in messages
            ]
            prompt = next(
                (p["text"] for p in messages[0][0]["content"] if p["type"] == "text"), None
            )
        asked.append((prompt, len(inputs)))
        truth = ["bright" if np.asarray(Image.open(x)).mean() > 100 else "dark" for x in inputs]
        return [ChatResponse(t if prompt in right else "no idea") for t in truth]

    monkeypatch.setattr(model, "chat", chat)
    return asked


def test_a_manifests_conversations_are_asked_turn_by_turn(tiny_model, monkeypatch, tmp_path):
    for name, value in (("dark.png", 10), ("bright.png", 240)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name)

    def conv(shade):
        return [
            {"from": "human", "value": "<image>\nIs it bright?"},
            {"from": "gpt", "value": shade},
            {"from": "human", "value": "And its shade?"},
            {"from": "gpt", "value": shade},
        ]

    lines = [
        {"modality": "image", "input": "dark.png", "conversations": conv("dark")},
        {"modality": "image", "input": "bright.png", "conversations": conv("bright")},
        {"modality": "image", "input": "dark.png", "caption": "captions are not questions"},
        {"modality": "audio", "input": "dark.png", "conversations": conv("dark")},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    asked = answering(tiny_model, monkeypatch, right={"<image>\nIs it bright?"})
    r = evaluate_qa(tiny_model, "image", data=str(tmp_path / "m.jsonl"))
    # one batch per question; the image goes where the question names <image>, as in training
    assert sorted(asked) == [("<image>\nIs it bright?", 2), ("And its shade?", 2)]
    assert r["by_question"] == {
        "<image>\nIs it bright?": {"correct": 2, "n": 2},
        "And its shade?": {"correct": 0, "n": 2},
    }
    assert r["qa_accuracy"] == 0.5


def test_every_stage_that_trains_instruction_data_reports_qa(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage4_instruct.yaml",
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path}",
            "steps=1",
            "batch_size=4",
            "eval.samples=3",
            "eval.modalities=[image, audio]",
            "data={image: {task: instruct, pool: 8}, audio: {task: caption, pool: 8}}",
        ],
    )
    r = Recipe(cfg, quiet=True).setup()
    r.train()
    r.save()
    final = [x for x in read_metrics(tmp_path) if x.get("final")][-1]
    assert set(final["qa"]) == {"image"}  # audio trains captions only here
    qa = final["qa"]["image"]
    assert set(qa["by_question"]) == {"What colour is it?", "What shape is it?", "Where is it?"}
    assert qa["n"] == 9 and 0 <= qa["qa_accuracy"] <= 1


def test_onellm_eval_task_qa_prints_and_writes_per_question(tmp_path, capsys):
    from onellm.cli.main import main

    assert (
        main(
            [
                "eval",
                str(TINY),
                "--task",
                "qa",
                "--modality",
                "imu",
                "--modality",
                "audio",
                "--samples",
                "4",
                "--json",
                str(tmp_path / "qa.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "What is the person doing? " in out and "How does it sound? " in out
    saved = json.loads((tmp_path / "qa.json").read_text())
    assert saved["imu"]["by_question"]["What is the person doing?"]["n"] == 4
    assert saved["audio"]["n"] == 8


def test_the_demo_report_carries_the_qa_table(tmp_path, capsys):
    from onellm.cli.demo import run_demo

    report = run_demo(
        tmp_path, quiet=True, steps_scale=0.002, device="cpu", overrides=["eval.samples=2"]
    )
    by_stage = {s["name"]: s["qa"] for s in report["stages"]}
    assert not by_stage["stage3-depth-normal-imu-fmri"]  # captions only before stage 4
    qa = by_stage["stage4-instruct"]
    assert len(qa) == 8 and all(0 <= v["accuracy"] <= 1 and v["by_question"] for v in qa.values())
    out = capsys.readouterr().out
    table = out.split("held-out question answering (exact match) after each stage\n")[1]
    assert table.splitlines()[1].startswith("stage4-instruct")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["stages"][-2]["qa"] == qa
    # then the output experts, from the tiny decoders the repository keeps
    stage5 = saved["stages"][-1]
    assert stage5["name"] == "stage5-decoders" and stage5["qa"]
    weights = ROOT / "configs" / "weights" / "tiny_decoders.safetensors"
    assert stage5["loaded"] == [{"path": str(weights), "sha256": sha256(weights)}]
    assert f"loads {weights}" in out
    assert 0 <= saved["seg_miou"] <= 1 and 0 <= saved["gen_color_accuracy"] <= 1
    prompts = [c["prompt"] for c in saved["chats"]]
    assert any(p.startswith("segment the ") for p in prompts), prompts
    assert any(p.startswith("draw a ") for p in prompts), prompts
    assert (tmp_path / "plots" / "outputs.png").is_file()
