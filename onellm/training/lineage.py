"""What a saved model was trained on, and its held-out figures: RUN/final/trained_on.json.

    {"stages": [{"name": "stage1-image", "sources": {"image": {"modality": "image",
                 "task": "caption", "data": "synthetic", "weight": 1.0, ...}}}, ...],
     "held_out": [{"modality": "image", "task": "caption", "data": "synthetic", "n": 100,
                   "seed": 1, "samples": 100, "accuracy": 0.99}, ...]}

`stages` is every stage from the first to this one (a stage copies its parent's list and
adds itself), `held_out` the figures of the model as saved (each with the `stage` that
measured it: a set a stage did not measure, e.g. with `eval.parent: false`, keeps its
parent's), so a later stage knows what to replay (onellm/training/replay.py) and which
modalities to hold to the parent's figures (onellm/training/summary.py). The shapes world
is procedural: `"data": "synthetic"` regenerates it by name; a manifest is kept by its
absolute path, so replaying it on another machine needs the file at that path.

A model saved before this file existed is read from its run's stage.yaml and metrics.jsonl
beside it (RUN/final/..), the layout onellm/training/run_state.py writes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from onellm.config import is_config
from onellm.errors import RegistryError
from onellm.registry import TASKS
from onellm.training.stage_eval import SYNTHETIC, HeldOut

TRAINED_ON = "trained_on.json"


@dataclass
class Lineage:
    stages: list[dict[str, Any]] = field(default_factory=list)
    held_out: list[dict[str, Any]] = field(default_factory=list)
    origin: str = ""  # where it was read from (for the report)

    def sources(self) -> dict[tuple[str, str], dict[str, Any]]:
        """{(modality, data): the latest stage's source of it}, for sources with a modality."""
        latest = {}
        for stage in self.stages:
            for src in stage["sources"].values():
                if src.get("modality"):
                    latest[(src["modality"], src["data"])] = src
        return latest

    def knows(self, modality: str, task: str) -> bool:
        """Whether a stage trained `modality` on captions (task "caption") or questions ("qa")."""
        want = "captions" if task == "caption" else "questions"
        return any(
            m == modality and teaches(s["task"], want) for (m, _), s in self.sources().items()
        )

    def figure(self, s: HeldOut, seed: int, samples: int) -> dict[str, Any] | None:
        """The saved figure of held-out set `s` on the same draw (None: not measured there)."""
        for r in self.held_out:
            draw = data_draw(r) == (seed, samples) if s.data == SYNTHETIC else True
            if HeldOut.of(r) == s and draw:
                return r
        return None


def data_draw(r: dict[str, Any]) -> tuple[Any, Any]:
    return r.get("seed"), r.get("samples")


def teaches(task: str, what: str) -> bool:
    """Whether task `task` trains `what` ("captions" or "questions")."""
    try:
        return bool(getattr(TASKS.get(task), what))
    except RegistryError:  # a task of a plug-in not installed here
        return False


def read_lineage(init_from: str) -> Lineage | None:
    """The lineage of the stage's starting model (None: a model YAML, or nothing saved)."""
    if is_config(init_from):
        return None
    saved = Path(init_from) / TRAINED_ON
    if saved.is_file():
        data = json.loads(saved.read_text())
        return Lineage(data["stages"], data["held_out"], origin=str(saved))
    return from_run(Path(init_from).parent)


def from_run(run: Path) -> Lineage | None:
    """An older saved model's lineage from its run: the last stage's sources (stage.yaml)
    and final held-out figures (metrics.jsonl)."""
    stage_yaml, metrics = run / "stage.yaml", run / "metrics.jsonl"
    if not (stage_yaml.is_file() and metrics.is_file()):
        return None
    cfg = yaml.safe_load(stage_yaml.read_text())
    sources = {}
    for key, s in cfg.get("data", {}).items():
        modality = s.get("modality")
        modality = modality[0] if isinstance(modality, list) else modality
        text_only = modality is None and TASKS.get(s["task"]).text_only
        sources[key] = {**s, "modality": None if text_only else modality or key}
    finals = [
        json.loads(line)
        for line in metrics.read_text().splitlines()
        if line.strip() and '"final": true' in line
    ]
    seed = cfg.get("seed", 0) + 1  # the stage eval draws seed + 1 (stage_eval.py)
    draw = {"seed": seed, "samples": cfg.get("eval", {}).get("samples", 100)}
    rows = []
    for task, key, metric in (("caption", "results", "exact_match"), ("qa", "qa", "qa_accuracy")):
        for m, r in (finals[-1].get(key, {}) if finals else {}).items():
            rows.append(
                {"modality": m, "task": task, "data": SYNTHETIC, "n": r["n"], **draw}
                | {"accuracy": r[metric]}
            )
    return Lineage([{"name": cfg["name"], "sources": sources}], rows, origin=str(run))


def write_lineage(
    final: Path, parent: Lineage | None, name: str, sources: dict[str, Any], rows: list[dict]
) -> None:
    """RUN/final/trained_on.json: the parent's stages, this one's sources (`Source`s by
    key), and the held-out figures the model was saved with."""
    mine = {}
    for key, s in sources.items():
        d = dataclasses.asdict(s.cfg)
        if d["data"] != SYNTHETIC:
            d["data"] = str(Path(d["data"]).resolve())
        mine[key] = {**d, "modality": s.modality}
    stages = [*(parent.stages if parent else []), {"name": name, "sources": mine}]
    # a set this stage did not measure keeps the figure of the stage that did (`stage`)
    measured = {HeldOut.of(r) for r in rows}
    kept = [r for r in (parent.held_out if parent else []) if HeldOut.of(r) not in measured]
    held_out = [{**r, "stage": name} for r in rows] + kept
    (final / TRAINED_ON).write_text(json.dumps({"stages": stages, "held_out": held_out}, indent=1))
