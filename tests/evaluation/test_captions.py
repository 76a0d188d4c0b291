"""Captions scored as COCO scores them: `score_captions` equals pycocoevalcap's COCOEvalCap
on a multi-reference set, the Java-free tokenizer equals PTB on plain captions, and bad
input is refused by name."""

import pytest

from onellm.errors import InputError
from onellm.evaluation.captions import COCO_NAMES, CaptionScorer, score_captions
from onellm.evaluation.ptb import ptb_tokenize, simple_tokenize

needs_java = pytest.mark.skipif(
    not __import__("shutil").which("java"), reason="no java on PATH: PTB and METEOR need it"
)

# COCO-like captions: several references each, punctuation, clitics, numbers, brackets
REFERENCES = [
    [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "A person on a surfboard catching a wave.",
    ],
    ["Two dogs, one black and one white, play in the snow.", "Dogs playing in the snow."],
    ["A plate of food: rice, beans and 2 eggs.", "A dinner plate with rice and beans on it."],
    ["A dog's toy isn't on the bed (it's on the floor)."],
    ["A red double-decker bus drives down a city street.", "A bus on the street.", "A bus."],
]
PREDICTIONS = [
    "a man riding a wave on a surfboard",
    "Dogs playing in the snow.",
    "a plate of rice and beans",
    "",  # an empty reply is scored, not replaced
    "a red bus driving down a street",
]


class NoSpice:
    """SPICE downloads Stanford CoreNLP models at first use (no network here); onellm leaves
    it out, so COCOEvalCap's run gets a scorer that reports zeros in its place."""

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)

    def method(self):
        return "SPICE"


def coco_eval(predictions, references):
    """COCOEvalCap itself, on COCO-format annotation and result objects (pycocotools)."""
    from pycocoevalcap.eval import COCOEvalCap
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": i} for i in range(len(references))],
        "annotations": [
            {"image_id": i, "id": 100 * i + j, "caption": c}
            for i, refs in enumerate(references)
            for j, c in enumerate(refs)
        ],
    }
    coco.createIndex()
    result = coco.loadRes([{"image_id": i, "caption": p} for i, p in enumerate(predictions)])
    evaluation = COCOEvalCap(coco, result)
    evaluation.evaluate()
    return evaluation.eval


@needs_java
def test_scores_equal_cocoevalcap_with_every_reference(monkeypatch):
    import pycocoevalcap.eval

    with CaptionScorer() as scorer:
        ours = scorer.score(PREDICTIONS, REFERENCES)
        # COCOEvalCap's run reuses our METEOR process: one Java start in the test, not two
        monkeypatch.setattr(pycocoevalcap.eval, "Meteor", lambda: scorer.meteor)
        monkeypatch.setattr(pycocoevalcap.eval, "Spice", NoSpice)
        theirs = coco_eval(PREDICTIONS, REFERENCES)
    assert ours["tokenizer"] == "ptb" and ours["skipped"] == {}
    for key, name in COCO_NAMES.items():
        assert ours[key] == pytest.approx(theirs[name], abs=1e-12), key
    assert ours["n"] == 5 and ours["references"] == pytest.approx(11 / 5)
    assert ours["exact_match"] == pytest.approx(1 / 5)  # "dogs playing in the snow"
    # every reference counts: against the first reference alone the scores fall
    first = score_captions(PREDICTIONS, [r[:1] for r in REFERENCES], tokenizer="simple")
    assert first["cider"] < ours["cider"] and first["bleu4"] < ours["bleu4"]
    assert first["exact_match"] == 0
    # without Java: the simple tokenizer, no METEOR, and on these captions the same numbers
    monkeypatch.setenv("PATH", "")
    alone = score_captions(PREDICTIONS, REFERENCES)
    assert alone["tokenizer"] == "simple"
    assert alone["skipped"] == {
        "ptb": "no java on PATH: simple tokenizer",
        "meteor": "no java on PATH (METEOR is a Java program)",
    }
    assert "meteor" not in alone
    for key in COCO_NAMES.keys() - {"meteor"}:
        assert alone[key] == pytest.approx(ours[key], abs=1e-12), key


PLAIN = [
    *(c for refs in REFERENCES for c in refs),
    'A sign that says "STOP" on a pole...',
    "Kids can't swim; they cannot, we'll see.",
    "People at the U.S. open: Mr. Smith's serve at 3:30, 1,000 fans.",
    "A close-up of a 'vintage' car -- red - and the dogs' bowls [empty] {ok}?",
    "It costs $3.50, 50% off! #1 pick & roll",
    "  a red   circle on the left  ",
    "\x08\x08ri\x08ri a\u200bb ab\xadcd",  # a tiny model's stray bytes
]


@needs_java
def test_the_simple_tokenizer_equals_ptb_on_plain_captions():
    assert [simple_tokenize(c) for c in PLAIN] == ptb_tokenize(PLAIN)
    assert simple_tokenize("A dog's toy isn't on the bed (it's on the floor).") == (
        "a dog 's toy is n't on the bed -lrb- it 's on the floor -rrb-"
    )


@needs_java
def test_a_line_break_inside_a_caption_shifts_no_other():
    # PTB breaks lines at \v, \f and U+2028 too: pycocoevalcap, replacing only \n, would
    # give every later caption the tokens of the one before it
    got = ptb_tokenize(["a\vb", "c\fd", "e\u2028f", "g\r\nh", "last"])
    assert got == ["a b", "c d", "e f", "g h", "last"]


def test_bad_input_is_refused_by_sample_and_reference():
    cases = [
        (["a"], [[]], "captions: references of sample 0: expected a non-empty list of strings, got []"),
        (["a", "b"], [["a"], ["b", 5]], "captions: reference 1 of sample 1: expected a non-empty string, got 5"),
        (["a"], [["  "]], "captions: reference 0 of sample 0: expected a non-empty string, got '  '"),
        ([None], [["a"]], "captions: prediction 0: expected a string, got None"),
        (["a", "b"], [["a"]], "captions: expected as many reference lists as predictions (at least one), got 2 predictions and 1 reference lists"),
        ([], [], "captions: expected as many reference lists as predictions (at least one), got 0 predictions and 0 reference lists"),
    ]  # fmt: skip
    for predictions, references, message in cases:
        with pytest.raises(InputError) as e:
            score_captions(predictions, references, tokenizer="simple", meteor=False)
        assert str(e.value) == message
    with pytest.raises(InputError, match="expected tokenizer one of"):
        score_captions(["a"], ["a"], tokenizer="nltk")
