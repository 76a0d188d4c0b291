"""Captions scored as COCO scores them: `score_captions(predictions, references)`.

What pycocoevalcap's `COCOEvalCap.evaluate()` computes, on plain lists: every reference of
a sample, Stanford's PTB tokenizer (ptb.py), then BLEU-1..4, METEOR, ROUGE-L and CIDEr
(COCO's `Cider`, the CIDEr-D variant) from pycocoevalcap's own scorers, corpus-level as
COCO reports them; plus onellm's exact match (the prediction equals one of the references
after `normalise`). SPICE is left out: it downloads Stanford CoreNLP models at first use.

Java: the PTB tokenizer and METEOR are Java programs. Without Java the captions are
tokenised by `simple_tokenize` (equal to PTB on plain captions) and METEOR is skipped; the
result says which (`"tokenizer": "ptb" | "simple"`, `"skipped": {"meteor": why}`).
Measured on a 2-core AMD EPYC shared with other jobs: one PTB call ~0.3 s, METEOR's start
~7 s (it loads its paraphrase tables), so `CaptionScorer` keeps one METEOR process for
several corpora (`onellm eval` scores each modality apart).

`onellm eval` and the lmms-eval tasks both score through this, so they agree on a file.
COCO_NAMES maps the keys to COCOEvalCap's.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import numpy as np

from onellm.errors import InputError
from onellm.evaluation.ptb import java, ptb_tokenize, simple_tokenize

COCO_NAMES = {
    "bleu1": "Bleu_1",
    "bleu2": "Bleu_2",
    "bleu3": "Bleu_3",
    "bleu4": "Bleu_4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE_L",
    "cider": "CIDEr",
}
TOKENIZERS = ("auto", "ptb", "simple")


def normalise(text: str) -> str:
    """Case, outer spaces, runs of spaces and a final period removed: exact match's view."""
    return re.sub(r"\s+", " ", text.lower().strip().rstrip(".")).strip()


def score_captions(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    *,
    tokenizer: str = "auto",
    meteor: bool = True,
) -> dict[str, Any]:
    """COCO's caption scores of `predictions` against every caption of `references` (one
    list per prediction; a bare string is one reference). `tokenizer`: "ptb" (Java),
    "simple" (no Java), "auto" (ptb where Java runs). `meteor`: where Java runs.
    -> {n, exact_match, bleu1..bleu4, meteor, rouge_l, cider, references (mean per
    sample), ref_words (mean tokens per reference), tokenizer, skipped, scorer}."""
    with CaptionScorer(tokenizer=tokenizer, meteor=meteor) as scorer:
        return scorer.score(predictions, references)


class CaptionScorer:
    """COCO's scorers with the Java processes they need: METEOR started once (at the first
    `score`) and reused for every corpus scored until `close()` (or the `with` block ends)."""

    def __init__(self, *, tokenizer: str = "auto", meteor: bool = True) -> None:
        if tokenizer not in TOKENIZERS:
            raise InputError(f"captions: expected tokenizer one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.want_meteor = meteor
        self.meteor: Any = None  # pycocoevalcap's Meteor, once started
        self.skipped: dict[str, str] = {}

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop METEOR's Java process (pycocoevalcap's Meteor has no close; its __del__
        takes a lock it never gives back, so it must not run twice)."""
        if self.meteor is not None:
            p = self.meteor.meteor_p
            p.stdin.close()
            p.kill()
            p.wait()
            self.meteor = None

    def score(
        self, predictions: Sequence[str], references: Sequence[Sequence[str] | str]
    ) -> dict[str, Any]:
        """One corpus's scores (`score_captions`' result)."""
        # pycocoevalcap's scorers: loaded only to score
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        refs = checked(predictions, references)
        flat = [*predictions, *(r for rs in refs for r in rs)]
        tokens, used = self.tokenize(flat)
        n = len(predictions)
        res = {i: [tokens[i]] for i in range(n)}
        gts, at = {}, n
        for i, rs in enumerate(refs):
            gts[i], at = tokens[at : at + len(rs)], at + len(rs)
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its ratios
            bleu, _ = Bleu(4).compute_score(gts, res)
        got: dict[str, Any] = {f"bleu{k + 1}": float(b) for k, b in enumerate(bleu)}
        meteor = self.run_meteor(gts, res)
        if meteor is not None:
            got["meteor"] = meteor
        got["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        got["cider"] = float(Cider().compute_score(gts, res)[0])
        exact = [
            normalise(p) in set(map(normalise, rs)) for p, rs in zip(predictions, refs, strict=True)
        ]
        return {
            "n": n,
            "exact_match": float(np.mean(exact)),
            **got,
            "references": float(np.mean([len(rs) for rs in refs])),
            "ref_words": float(np.mean([len(t.split()) for ts in gts.values() for t in ts])),
            "tokenizer": used,
            "skipped": dict(self.skipped),
            "scorer": f"pycocoevalcap {version('pycocoevalcap')}",
        }

    def tokenize(self, captions: list[str]) -> tuple[list[str], str]:
        """-> the captions tokenised, and by which tokenizer."""
        if self.tokenizer == "ptb" or (self.tokenizer == "auto" and java()):
            try:
                return ptb_tokenize(captions), "ptb"
            except (RuntimeError, OSError) as e:
                if self.tokenizer == "ptb":
                    raise
                self.skipped["ptb"] = f"Java's PTB tokenizer failed ({e}): simple tokenizer"
        elif self.tokenizer == "auto":
            self.skipped["ptb"] = "no java on PATH: simple tokenizer"
        return [simple_tokenize(c) for c in captions], "simple"

    def start_meteor(self) -> Any:
        """pycocoevalcap's Meteor, started once; None (and why in `skipped`) without Java."""
        if self.meteor is None and "meteor" not in self.skipped:
            if not self.want_meteor:
                self.skipped["meteor"] = "not asked for"
            elif not java():
                self.skipped["meteor"] = "no java on PATH (METEOR is a Java program)"
            else:
                from pycocoevalcap.meteor.meteor import Meteor  # starts Java: only if asked

                self.meteor = Meteor()
        return self.meteor

    def run_meteor(self, gts: dict, res: dict) -> float | None:
        """METEOR of the corpus, or None where it cannot run (why: `skipped`)."""
        meteor = self.start_meteor()
        if meteor is None:
            return None
        try:
            return float(meteor.compute_score(gts, res)[0])
        except (ValueError, OSError) as e:  # the JVM died: an empty line, a broken pipe
            self.close()
            self.skipped["meteor"] = f"METEOR's Java process failed ({e})"
            return None


def checked(predictions: Sequence[str], references: Sequence[Sequence[str] | str]):
    """`references` as lists of strings, each checked; InputError naming the sample."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise InputError("captions: expected lists of predictions and references, got a string")
    if len(predictions) != len(references) or not predictions:
        raise InputError(
            "captions: expected as many reference lists as predictions (at least one), got "
            f"{len(predictions)} predictions and {len(references)} reference lists"
        )
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise InputError(f"captions: prediction {i}: expected a string, got {p!r:.60}")
    out = []
    for i, rs in enumerate(references):
        rs = [rs] if isinstance(rs, str) else rs
        if not isinstance(rs, Sequence) or not rs:
            raise InputError(
                f"captions: references of sample {i}: expected a non-empty list of strings, "
                f"got {rs!r:.60}"
            )
        for j, r in enumerate(rs):
            if not isinstance(r, str) or not r.strip():
                raise InputError(
                    f"captions: reference {j} of sample {i}: expected a non-empty string, "
                    f"got {r!r:.60}"
                )
        out.append(list(rs))
    return out
