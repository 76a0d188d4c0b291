"""lmms-eval's own CLI (`python -m lmms_eval --model onellm`) on a tiny saved model, offline:
onellm's shipped tasks on held-out shapes-world scenes written as users' files (.ply, CSV,
NIfTI + mask, rgb + 16-bit depth PNG, rgb + normal PNG), and an image captioning task in
lmms-eval's standard task format scored by lmms-eval's own COCO functions. Each score must
equal `onellm eval --data` on the same files, and `onellm eval --backend lmms-eval` the CLI.
One lmms-eval subprocess runs every task (its import alone takes seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "lmms_eval", reason="lmms-eval is the eval extra (pip install onellm[eval]); not installed"
)

from onellm import OneLLM  # noqa: E402
from onellm.cli.main import main  # noqa: E402
from onellm.data import shapes  # noqa: E402
from onellm.data.manifest import read_manifest  # noqa: E402
from onellm.inference.messages import one_turn  # noqa: E402
from onellm.lmms import tasks_path  # noqa: E402
from onellm.lmms.__main__ import main as lmms_main  # noqa: E402
from onellm.lmms.shapes_data import SHIPPED, write_held_out  # noqa: E402
from tests.conftest import TINY  # noqa: E402

SAMPLES, TOKENS = 4, 10  # scenes per modality; new tokens (--gen_kwargs / --max-new-tokens)
CAPTIONS = [f"onellm_{m}_cap" for m in SHIPPED]
QA = ["onellm_imu_qa", "onellm_depth_qa", "onellm_normal_qa"]
METRICS = ("exact_match", "bleu4", "meteor", "rouge_l", "cider")
PROMPT = "Provide a one-sentence caption for the provided image."  # lmms-eval's COCO prompt
IMAGE_TASK = f"""\
task: shapes_image_cap
dataset_path: json
dataset_kwargs:
  data_files:
    test: images.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{PROMPT}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 64
  temperature: 0
  do_sample: false
process_results: !function lmms_eval.tasks.coco_cap.utils.coco_process_result
metric_list:
  - metric: coco_CIDEr
    aggregation: !function lmms_eval.tasks.coco_cap.utils.coco_cider
    higher_is_better: true
"""
IMAGE_UTILS = """from PIL import Image

def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
"""


def offline(tmp: Path) -> dict[str, str]:
    """What lmms-eval and datasets read: no hub, a cache of the test's own."""
    return {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf"),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A saved tiny model; the shipped modalities' scenes as files + a manifest; shapes-world
    images as an lmms-eval task folder and a manifest. A random model's replies match no
    caption, so every other record gets the model's own reply as one of its two references
    (and as its answer): the scores are then neither 0 nor 1, and must agree."""
    tmp = tmp_path_factory.mktemp("lmms")
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY).eval()
    model.save_pretrained(tmp / "run")
    manifest = write_held_out(model, tmp / "data", SHIPPED, samples=SAMPLES, seed=1)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    records = read_manifest(manifest)
    for line, r in zip(lines, records, strict=True):
        line["input"] = r.input  # absolute: the test's reads need no folder
    for m in SHIPPED:
        own = [(i, line) for i, line in enumerate(lines) if line["modality"] == m]
        caps = [(i, line) for i, line in own if "caption" in line]
        said = replies(model, [(records[i].input, m, None) for i, _ in caps])
        for k, ((_, line), reply) in enumerate(zip(caps, said, strict=True)):
            other = f"the {m} of a shape"
            mine = k % 2 and reply.strip()  # a reply may be empty: no reference then
            line["captions"] = [reply, line["caption"]] if mine else [line["caption"], other]
            del line["caption"]
        by_question: dict[str, list] = {}  # asked in one batch a question, as eval asks
        for i, line in own:
            for j, turn in enumerate(line.get("conversations", [])[::2]):
                by_question.setdefault(turn["value"], []).append((i, line, 2 * j + 1))
        for q, where in by_question.items():
            said = replies(model, [(records[i].input, m, q) for i, _, _ in where])
            for k, ((_, line, j), answer) in enumerate(zip(where, said, strict=True)):
                if k % 2 and answer.strip():  # every other scene's answer: the model's own
                    line["conversations"][j]["value"] = answer
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tasks = tmp / "tasks"
    shutil.copytree(tasks_path(), tasks / "onellm")  # lmms-eval reads one --include_path
    (tasks / "image").mkdir()
    rows, records = [], []
    scenes = write_images(model, tmp / "images")
    said = replies(model, [(path, "image", PROMPT) for path, _ in scenes])
    for i, ((path, caption), reply) in enumerate(zip(scenes, said, strict=True)):
        refs = [caption, reply if i % 2 and reply.strip() else "a shape in a picture"]
        rows.append({"question_id": f"shapes_{i:06d}.png", "id": i, "image": path, "answer": refs})
        records.append({"modality": "image", "input": path, "captions": refs})
    (tasks / "image" / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "image" / "shapes_image_cap.yaml").write_text(IMAGE_TASK)
    (tasks / "image" / "utils.py").write_text(IMAGE_UTILS)
    images = tmp / "images.jsonl"
    images.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp, manifest, images


def replies(model, asked: list[tuple]) -> list[str]:
    """The model's greedy replies to (input, modality, prompt) rows, in one batch."""
    convs = [one_turn({m: raw}, prompt) for raw, m, prompt in asked]
    return [r.text for r in model.chat(messages=convs, max_new_tokens=TOKENS)]


def write_images(model, folder: Path) -> list[tuple[str, str]]:
    """Shapes-world test images as PNG files (the image modality's writer), with captions."""
    folder.mkdir()
    write = model.modalities["image"].write
    scenes = shapes.sample("image", SAMPLES, "test", seed=1, model=model)
    return [(str(write(s.input, folder / str(i))), s.caption) for i, s in enumerate(scenes)]


@pytest.fixture(scope="module")
def lmms_cli(bench):
    """lmms-eval's CLI over every shipped task and the image task, in one subprocess."""
    tmp, manifest, _ = bench
    env = {**os.environ, **offline(tmp), "ONELLM_LMMS_DATA": str(manifest)}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "onellm"]
    cmd += ["--model_args", f"pretrained={tmp / 'run'},device=cpu,batch_size=8"]
    cmd += ["--include_path", str(tmp / "tasks"), "--output_path", str(tmp / "out")]
    cmd += ["--tasks", ",".join([*CAPTIONS, *QA, "shapes_image_cap"])]
    cmd += ["--gen_kwargs", f"max_new_tokens={TOKENS}", "--log_samples"]  # writes results
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    failed = done.returncode or "Error during evaluation" in done.stdout  # lmms-eval exits 0
    assert not failed, done.stdout[-3000:] + done.stderr[-3000:]
    (found,) = [p for p in (tmp / "out").rglob("*_results.json") if "submissions" not in p.parts]
    results = json.loads(found.read_text())["results"]
    return {t: {k.split(",")[0]: v for k, v in r.items()} for t, r in results.items()}


def onellm_eval(args: list[str], out: Path) -> dict:
    assert main(["eval", *args, "--max-new-tokens", str(TOKENS), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_tasks_path_is_printed_for_lmms_evals_include_path():
    done = subprocess.run(
        [sys.executable, "-m", "onellm.lmms", "tasks-path"], capture_output=True, text=True
    )
    assert done.returncode == 0 and Path(done.stdout.strip()) == tasks_path()
    assert {p.stem for p in tasks_path().glob("onellm_*.yaml")} >= {*CAPTIONS, *QA}


def test_lmms_eval_cli_scores_equal_onellm_eval_on_the_same_files(bench, lmms_cli):
    tmp, manifest, images = bench
    run = str(tmp / "run")
    captions = onellm_eval([run, "--data", str(manifest)], tmp / "captions.json")
    for m in SHIPPED:
        got, want = lmms_cli[f"onellm_{m}_cap"], captions[m]
        assert want["n"] == SAMPLES and want["references"] == 2
        for metric in METRICS:
            if metric in want:  # METEOR: where Java runs
                assert got[metric] == pytest.approx(want[metric], abs=1e-9), (m, metric)
    # the model's own replies among the references: neither nothing nor everything matches
    assert any(0 < lmms_cli[f"onellm_{m}_cap"]["exact_match"] < 1 for m in SHIPPED)
    assert any(0 < lmms_cli[t]["accuracy"] < 1 for t in QA)
    qa = onellm_eval([run, "--data", str(manifest), "--task", "qa"], tmp / "qa.json")
    for task in QA:
        m = task.split("_")[1]
        assert lmms_cli[task]["accuracy"] == pytest.approx(qa[m]["qa_accuracy"], abs=1e-12)
    # the standard-format task, scored by lmms-eval's COCO functions (COCOEvalCap's PTB
    # tokenizer and scorers), against onellm's scorer on the same predictions
    asked = ["--prompt", PROMPT, "--no-meteor"]  # lmms-eval's coco functions start one a metric
    image = onellm_eval([run, "--data", str(images), *asked], tmp / "image.json")
    got = lmms_cli["shapes_image_cap"]
    assert 0 < got["coco_CIDEr"] == pytest.approx(image["image"]["cider"], abs=1e-9)


def test_onellm_eval_backend_lmms_eval_prints_and_writes_the_clis_numbers(
    bench, lmms_cli, capsys, monkeypatch
):
    tmp, manifest, _ = bench
    for k, v in offline(tmp).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ONELLM_LMMS_DATA", raising=False)  # --data sets it
    out = tmp / "backend.json"
    tasks = ["onellm_imu_qa", "onellm_depth_qa"]  # no caption scorer: its Java starts in ~7 s
    args = [str(tmp / "run"), "--backend", "lmms-eval", "--tasks", ",".join(tasks)]
    args += ["--data", str(manifest), "--device", "cpu", "--max-new-tokens", str(TOKENS)]
    assert main(["eval", *args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    for task in tasks:
        assert task in printed
        for metric, value in written[task].items():
            if isinstance(value, float):
                assert value == pytest.approx(lmms_cli[task][metric], abs=1e-12), (task, metric)


def test_write_shapes_writes_the_files_and_a_manifest_onellm_reads(bench, tmp_path, capsys):
    tmp, _, _ = bench
    argv = ["write-shapes", str(tmp / "run"), str(tmp_path), "--samples", "2"]
    assert lmms_main([*argv, "--modality", "imu", "--modality", "depth"]) == 0
    assert Path(capsys.readouterr().out.split()[-1]) == tmp_path / "manifest.jsonl"
    records = read_manifest(tmp_path / "manifest.jsonl")
    assert [(r.modality, bool(r.caption), bool(r.turns)) for r in records] == [
        (m, c, not c) for m in ("imu", "depth") for _ in range(2) for c in (True, False)
    ]
    assert records[0].input.endswith(".csv") and set(records[-1].input) == {"rgb", "depth"}
