"""What onellm's lmms-eval tasks (tasks/*.yaml) call through `!function`: their data, their
prompts and their scores.

Data: a JSONL manifest in onellm's format (onellm/data/manifest.py), named by the
environment: `ONELLM_LMMS_<MODALITY>` (ONELLM_LMMS_POINT, ..._IMU, ..._FMRI, ..._DEPTH,
..._NORMAL) or else `ONELLM_LMMS_DATA` (one manifest holding several modalities, as
`onellm eval --data` reads it). lmms-eval has no flag that sets a task's data file, and a
YAML's `!function` is the one hook it runs when it loads a task, so `data_files` is
`!function onellm.lmms.task_docs.<modality>_data`: read from the environment then.

Docs are read by onellm's manifest reader, not by `datasets`' JSON reader (a manifest's
`input` is a path for one modality and a dict of paths for another, which one Arrow
schema cannot hold; and relative paths resolve against the manifest's folder, as `onellm
eval --data` resolves them). Captions are scored by `CaptionScorer` (onellm/evaluation/
captions.py: every reference, PTB tokens, COCO's scorers), what `onellm eval` scores
with, so both give the same numbers on one file; answers by exact match after
`normalise`, as `onellm eval --task qa` scores them.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from functools import cache, lru_cache
from typing import Any

import datasets

from onellm.data.manifest import Record, read_manifest
from onellm.errors import InputError
from onellm.evaluation.captions import CaptionScorer, normalise
from onellm.registry import MODALITIES

MODALITY_NAMES = ("point", "imu", "fmri", "depth", "normal", "image", "video", "audio")
CAPTION_METRICS = ("exact_match", "bleu4", "meteor", "rouge_l", "cider")


def data_file(modality: str) -> str:
    """The manifest the task of `modality` reads (see the module's docstring)."""
    own = f"ONELLM_LMMS_{modality.upper()}"
    path = os.environ.get(own) or os.environ.get("ONELLM_LMMS_DATA")
    if not path:
        raise InputError(
            f"onellm_{modality} tasks: expected {own} or ONELLM_LMMS_DATA set to a JSONL "
            "manifest (onellm's format; docs/lmms-eval.md), got neither"
        )
    if not os.path.isfile(path):
        raise InputError(f"onellm_{modality} tasks: expected a JSONL manifest, got {path!r}")
    return os.path.abspath(path)


def __getattr__(name: str) -> Any:
    """`<modality>_data`: read when lmms-eval loads a task (not at import), so a process
    that sets the variable after importing this module still gets its file."""
    modality = name.removesuffix("_data")
    if name.endswith("_data") and modality in MODALITY_NAMES:
        return data_file(modality)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def references(record: Record) -> list[str]:
    """Every reference caption of a record (`caption`, or each of `captions`)."""
    return list(record.captions)


def records(modality: str) -> list[Record]:
    """The manifest's single-modality records of `modality` (or an alias of it)."""
    want = MODALITIES.canonical(modality)
    path = data_file(modality)
    return [
        r for r in read_manifest(path) if not r.more and MODALITIES.canonical(r.modality) == want
    ]


def caption_docs(modality: str) -> datasets.Dataset:
    """One doc per captioned record: its input (as JSON: a path or a dict of paths) and
    every reference."""
    rows = [
        {"modality": r.modality, "input": json.dumps(r.input), "references": references(r)}
        for r in records(modality)
        if references(r)
    ]
    return checked(rows, modality, "captions")


def qa_docs(modality: str) -> datasets.Dataset:
    """One doc per question-answer turn of each record's conversation, each asked alone."""
    rows = [
        {"modality": r.modality, "input": json.dumps(r.input), "question": q, "answer": a}
        for r in records(modality)
        for q, a in r.turns
    ]
    return checked(rows, modality, "conversations")


def checked(rows: list[dict], modality: str, what: str) -> datasets.Dataset:
    if not rows:
        raise InputError(
            f"onellm_{modality} tasks: expected {modality} records with {what} in "
            f"{data_file(modality)}, got none"
        )
    return datasets.Dataset.from_list(rows)


def doc_to_visual(doc: dict) -> list[dict[str, Any]]:
    """onellm's content part for the doc's input: {"type": m, m: path or {part: path}}."""
    return [{"type": doc["modality"], doc["modality"]: json.loads(doc["input"])}]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question (QA), else the task's prompt; an empty prompt is caption mode."""
    if "question" in doc and doc["question"]:
        return doc["question"]
    return (lmms_eval_specific_kwargs or {}).get("prompt", "")


def doc_to_target(doc: dict) -> str:
    return doc["answer"] if doc.get("answer") else doc["references"][0]


def caption_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """Every caption metric gets the prediction with its references; aggregation scores."""
    item = {"prediction": results[0], "references": list(doc["references"])}
    return {m: item for m in CAPTION_METRICS}


def qa_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"accuracy": float(normalise(results[0]) == normalise(doc["answer"]))}


@cache
def scorer() -> CaptionScorer:
    """One scorer for the process: lmms-eval aggregates through plain functions, so nothing
    else could hold METEOR's Java process (~7 s to start) from one task to the next."""
    made = CaptionScorer()
    atexit.register(made.close)
    return made


@lru_cache(maxsize=8)
def _scores(predictions: tuple[str, ...], refs: tuple[tuple[str, ...], ...]) -> dict:
    """One scoring per corpus, shared by the metrics lmms-eval aggregates one by one."""
    return scorer().score(list(predictions), [list(r) for r in refs])


def _metric(name: str, items: list[dict]) -> float:
    got = _scores(
        tuple(i["prediction"] for i in items), tuple(tuple(i["references"]) for i in items)
    )
    return float(got.get(name, float("nan")))  # METEOR: nan where Java cannot run it


def exact_match(items: list[dict]) -> float:
    return _metric("exact_match", items)


def bleu4(items: list[dict]) -> float:
    return _metric("bleu4", items)


def meteor(items: list[dict]) -> float:
    return _metric("meteor", items)


def rouge_l(items: list[dict]) -> float:
    return _metric("rouge_l", items)


def cider(items: list[dict]) -> float:
    return _metric("cider", items)


def _docs(modality: str, kind: str):
    def read(_: datasets.Dataset) -> datasets.Dataset:
        try:
            return (caption_docs if kind == "caption" else qa_docs)(modality)
        except InputError as e:  # lmms-eval shows only "RetryError[... raised InputError]"
            print(f"onellm_{modality}_{kind}: {e}", file=sys.stderr)
            raise

    read.__name__ = f"{modality}_{kind}_docs"
    return read


# process_docs of each task: the dataset lmms-eval loaded (the manifest's lines) is
# replaced by the records onellm's reader gives
point_caption_docs = _docs("point", "caption")
imu_caption_docs = _docs("imu", "caption")
imu_qa_docs = _docs("imu", "qa")
fmri_caption_docs = _docs("fmri", "caption")
depth_caption_docs = _docs("depth", "caption")
depth_qa_docs = _docs("depth", "qa")
normal_caption_docs = _docs("normal", "caption")
normal_qa_docs = _docs("normal", "qa")
