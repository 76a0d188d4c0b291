import json
import shutil

import numpy as np
import pytest
from PIL import Image

from onellm.training.evaluate import caption_metrics, evaluate, normalise


def test_exact_match_normalises_case_spaces_and_a_final_period():
    assert normalise("  A Red  circle. ") == "a red circle"
    m = caption_metrics(
        ["a red circle.", "A blue square", "a green cone"],
        ["a red circle", "a blue square", "a red cone"],
    )
    assert m["exact_match"] == pytest.approx(2 / 3)


def test_bleu4_by_hand():
    # one 4-gram-rich pair: candidate equals reference -> BLEU-4 = 1
    same = caption_metrics(["a red circle on the left"], ["a red circle on the left"])
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    # 6 words, 5 right unigrams, 3 of 5 bigrams, 1 of 4 trigrams, 0 of 3 four-grams (smoothed tiny)
    diff = caption_metrics(["a red circle at the left"], ["a red circle on the left"])
    p1, p2, p3 = 5 / 6, 3 / 5, 1 / 4
    assert (
        diff["bleu4"] < (p1 * p2 * p3) ** (1 / 3) * 0.1
    )  # BLEU-4 collapses without a 4-gram match


def test_cider_rewards_the_right_caption_most():
    refs = ["a red circle on the left", "a blue square at the top", "a low rising tone"]
    right = caption_metrics(refs, refs)["cider"]
    wrong = caption_metrics(refs[1:] + refs[:1], refs)["cider"]  # every caption paired wrongly
    assert right > 5 and wrong < 0.5


def test_a_manifest_is_scored_with_ptb_where_java_runs_and_the_shapes_world_without(
    tiny_model, tmp_path
):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    records = [{"modality": "image", "input": "a.png", "captions": ["a red circle", "a ring"]}] * 2
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = evaluate(tiny_model, "image", data=str(tmp_path / "t.jsonl"), max_new_tokens=3)
    assert got["tokenizer"] == ("ptb" if shutil.which("java") else "simple")
    assert "meteor" not in got and got["skipped"]["meteor"] == "not asked for"
    assert (got["n"], got["references"], got["lines"], got["max_new_tokens"]) == (2, 2.0, "1-2", 3)
    shapes = evaluate(tiny_model, "image", samples=2, max_new_tokens=3)
    assert shapes["tokenizer"] == "simple" and "lines" not in shapes
