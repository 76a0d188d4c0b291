"""`onellm eval RUN --data manifest.jsonl`: a user's own files for every modality (depth and
normal as rgb + map), several references a record, scored as COCO scores them, with what
was asked written beside the figures; a bad reference is one line naming the record."""

import hashlib
import json
import shutil

import pytest

from onellm.cli.main import main
from onellm.evaluation.captions import score_captions

# (modality, input as the manifest names it, under the conftest `files` folder)
INPUTS = [
    ("image", "x.png"),
    ("video", "clip.mp4"),
    ("audio", "x.wav"),
    ("point", "cloud.npy"),
    ("depth", {"rgb": "rgb.png", "depth": "depth.npy"}),
    ("normal", {"rgb": "rgb.png", "normal": "normal.npy"}),
    ("imu", "imu.npy"),
    ("fmri", "fmri.npy"),
]


@pytest.fixture
def manifest(files, tmp_path):
    """Two records per modality: one with three references, one with a single caption; a
    conversation record between them that caption evaluation passes over."""

    def at(name):
        return str(files / name)

    lines = []
    for m, given in INPUTS:
        raw = {k: at(v) for k, v in given.items()} if isinstance(given, dict) else at(given)
        refs = [f"a red {m} on the left", f"the {m} is red", f"a {m}, red."]
        lines += [
            {"modality": m, "input": raw, "captions": refs},
            {"modality": m, "input": raw, "conversations": [
                {"from": "human", "value": "colour?"}, {"from": "gpt", "value": "red"}]},
            {"modality": m, "input": raw, "caption": f"a blue {m}"},
        ]  # fmt: skip
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path, lines


def test_every_modality_with_every_reference_and_what_was_asked(manifest, tmp_path, capsys):
    path, lines = manifest
    out = tmp_path / "eval.json"
    asked = ["--prompt", "Describe it.", "--max-new-tokens", "5", "--json", str(out)]
    no_java = ["--no-meteor", "--simple-tokenizer"]
    assert main(["eval", "tiny", "--data", str(path), *asked, *no_java]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(m for m, _ in INPUTS)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for i, (m, _) in enumerate(INPUTS):
        r = results[m]
        first = 3 * i + 1  # its records' lines: the captioned ones, not the conversation
        assert r["lines"] == f"{first},{first + 2}" and r["n"] == 2
        assert (r["data"], r["data_sha256"]) == (str(path), digest)
        assert (r["prompt"], r["max_new_tokens"]) == ("Describe it.", 5)
        assert r["references"] == 2.0  # three and one
        refs = [lines[first - 1]["captions"], [lines[first + 1]["caption"]]]
        again = score_captions(r["predictions"], refs, tokenizer="simple", meteor=False)
        for key in ("exact_match", "bleu4", "rouge_l", "cider"):
            assert r[key] == again[key], (m, key)
        assert r["tokenizer"] == "simple" and r["skipped"] == {"meteor": "not asked for"}
        (row,) = [line for line in printed.splitlines() if line.startswith(f"{m} ")]
        assert row.split()[1:3] == ["2", "2.0"] and row.split()[-1] == f"{r['cider']:.3f}"
    assert "scored as COCO scores captions: simple tokenizer (as asked)" in printed
    assert "METEOR (-): not asked for" in printed


# slow: METEOR's Java start is 7 s on a quiet 2-core machine (25 s loaded); the default suite
# starts it in tests/evaluation/test_captions.py (scores == COCOEvalCap's) and in the README's
# `onellm eval` line
@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("java"), reason="no java on PATH: PTB and METEOR need it")
def test_with_java_the_table_shows_meteor(manifest, tmp_path, capsys):
    path, _ = manifest
    out = tmp_path / "eval.json"
    two = ["--modality", "image", "--modality", "fmri"]
    assert main(["eval", "tiny", "--data", str(path), *two, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert "BLEU-4  METEOR ROUGE-L   CIDEr" in printed and "METEOR (-)" not in printed
    assert "scored as COCO scores captions: PTB tokenizer (Java), every reference" in printed
    for m in ("image", "fmri"):
        (row,) = [line for line in printed.splitlines() if line.startswith(f"{m} ")]
        assert row.split()[5] == f"{results[m]['meteor']:.3f}"
        assert results[m]["tokenizer"] == "ptb" and results[m]["skipped"] == {}


def test_a_bad_reference_is_one_line_naming_the_record(manifest, tmp_path, capsys):
    path, lines = manifest
    lines[3]["captions"] = ["a red video", 7]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["eval", "tiny", "--data", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"onellm: error: manifest {bad}:4: expected 'captions'[1] a non-empty string, got 7"
    )
