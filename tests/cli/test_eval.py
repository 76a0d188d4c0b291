"""`onellm eval`: the stage's own held-out draw by default, one file per task, BLEU-4 only
where captions are long enough for it, and --data's modalities found in the manifest."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from onellm.cli.main import main
from onellm.training.recipe import read_metrics, train
from onellm.training.stage import load_stage
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """A two-step image stage with seed 3 and 4 held-out scenes: its final model and the
    final evaluation it logged."""
    out = tmp_path_factory.mktemp("stage") / "run"
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={out}",
            "steps=2",
            "batch_size=4",
            "seed=3",
            "eval.samples=4",
            "data.image.pool=16",
        ],
    )
    final = train(cfg, quiet=True)
    logged = [r for r in read_metrics(out) if r["event"] == "eval" and r.get("final")][-1]
    return final, logged


def test_eval_draws_what_the_stage_drew_and_gives_its_figures(stage_run, capsys):
    final, logged = stage_run
    # METEOR's Java start (~7 s) is tested in test_eval_manifest.py; PTB's call is here
    assert main(["eval", str(final), "--modality", "image", "--no-meteor"]) == 0
    out = capsys.readouterr().out
    stage = final.parent / "stage.yaml"
    assert (
        f"seed 4, 4 scenes per modality (the stage's own evaluation: its seed 3 + 1, {stage})"
        in out
    )
    got = json.loads((final / "eval_caption.json").read_text())["image"]
    want = logged["results"]["image"]
    assert got["n"] == want["n"] == 4 and got["seed"] == 4
    # the stage scores without Java (caption_metrics); `onellm eval` as COCO does, with
    # the PTB tokenizer where Java runs: the same figures on these captions
    for key in ("exact_match", "bleu4", "rouge_l", "cider"):
        assert got[key] == want[key], key
    assert got["examples"] == want["examples"]
    assert got["prompt"] is None and got["max_new_tokens"] == want["max_new_tokens"]
    if shutil.which("java"):
        assert got["tokenizer"] == "ptb" and want["tokenizer"] == "simple"


def test_each_task_writes_its_own_file(stage_run, capsys):
    final, _ = stage_run
    fast = ["--no-meteor", "--simple-tokenizer"]  # no Java: this test is about the files
    assert (
        main(["eval", str(final), "--modality", "image", "--samples", "2", "--seed", "0", *fast])
        == 0
    )
    assert (
        "seed 0, 2 scenes per modality (--seed as asked, --samples as asked)"
        in capsys.readouterr().out
    )
    caption = (final / "eval_caption.json").read_text()
    assert main(["eval", str(final), "--modality", "image", "--task", "qa", "--samples", "2"]) == 0
    assert (
        "seed 4, 2 scenes per modality (--samples as asked; the stage's own"
        in capsys.readouterr().out
    )
    assert (final / "eval_caption.json").read_text() == caption  # not overwritten
    qa = json.loads((final / "eval_qa.json").read_text())
    assert qa["image"]["n"] == 6 and "qa_accuracy" in qa["image"]
    assert not (final / "eval.json").exists()


@pytest.fixture
def manifest(tmp_path):
    """Two image records with captions of `words` words, written on demand."""

    def write(words: int, **fields) -> str:
        png = tmp_path / "x.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
        caption = " ".join(["red"] * words)
        path = tmp_path / f"test{words}.jsonl"
        record = {"modality": "image", "input": str(png), "caption": caption} | fields
        path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
        return str(path)

    return write


def test_data_without_modality_reads_the_manifests_and_bleu_waits_for_long_captions(
    manifest, tmp_path, capsys
):
    for words, shown in ((5, False), (9, True)):
        out_json = tmp_path / f"out{words}.json"
        asked = ["--json", str(out_json), "--no-meteor", "--simple-tokenizer"]
        assert main(["eval", "tiny", "--data", manifest(words), *asked]) == 0
        out = capsys.readouterr().out
        assert f"held-out set: {tmp_path / f'test{words}.jsonl'}" in out
        (row,) = [line for line in out.splitlines() if line.startswith("image ")]
        results = json.loads(out_json.read_text())
        assert list(results) == ["image"] and results["image"]["n"] == 2  # image only
        assert results["image"]["ref_words"] == words
        bleu = f"{results['image']['bleu4']:.3f}" if shown else "-"
        assert row.split()[4] == bleu and ("BLEU-4 (-) left out" in out) != shown


def test_data_without_the_modality_asked_or_any_caption_is_one_line(manifest, capsys):
    assert main(["eval", "tiny", "--data", manifest(5), "--modality", "audio"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onellm: error: --modality audio:") and "(it has: image)" in err
    assert main(["eval", "tiny", "--data", manifest(5), "--task", "qa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "onellm: error: --data: expected records with conversations, got none in " + manifest(5)
    )
