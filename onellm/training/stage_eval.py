"""A stage's held-out evaluation: which held-out sets it reads (the shapes world's test split
of a modality, or a held-out JSONL manifest; captions or questions) and one figure per set.

    eval: {modalities: [image, audio], data: {image: test.jsonl}}

Each figure is a row `{modality, task, data, n, seed, samples, accuracy}` (exact match over
`n` captions or questions; `seed` and `samples` only for the shapes world, whose draw they name): the rows the end-of-stage summary compares
with the parent model's (onellm/training/summary.py) and the saved model keeps
(onellm/training/lineage.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onellm.data import shapes
from onellm.data.manifest import read_manifest
from onellm.errors import ConfigError, InputError
from onellm.modeling.modality import Renders
from onellm.modeling.projection import Routed
from onellm.registry import TASKS
from onellm.training.evaluate import evaluate, evaluate_qa
from onellm.training.task import output_tasks

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class HeldOut:
    """One held-out set: a modality's captions ("caption") or questions ("qa"), from the
    shapes world's test split or from a manifest (its path)."""

    modality: str
    task: str = "caption"
    data: str = SYNTHETIC

    @property
    def label(self) -> str:
        where = "shapes world" if self.data == SYNTHETIC else Path(self.data).name
        return f"{self.modality} {where} {'captions' if self.task == 'caption' else 'questions'}"

    @classmethod
    def of(cls, row: dict[str, Any]) -> HeldOut:
        return cls(row["modality"], row["task"], row["data"])


def row(s: HeldOut, result: dict[str, Any], seed: int, samples: int) -> dict[str, Any]:
    """A held-out figure: the set, what it counted (captions or questions), the draw (the
    shapes world's: `samples` test scenes from `seed`) and the accuracy."""
    accuracy = result["exact_match"] if s.task == "caption" else result["qa_accuracy"]
    out = {"modality": s.modality, "task": s.task, "data": s.data, "n": result["n"]}
    draw = {"seed": seed, "samples": samples} if s.data == SYNTHETIC else {}
    return out | draw | {"accuracy": accuracy}


def can_evaluate(model: Any, s: HeldOut) -> bool:
    """Whether `model` can read set `s`: it has the modality, and the modality renders
    (shapes world) or the manifest is still there."""
    try:
        key = model.modality_key(s.modality)
    except InputError:
        return False
    if s.data == SYNTHETIC:
        return isinstance(model.modalities[key], Renders)
    return Path(s.data).is_file()


def manifest_sets(model: Any, modality: str, path: str) -> list[HeldOut]:
    """The held-out sets a manifest gives `modality`: captions where its records have
    captions, questions where they have conversations."""
    key = model.modality_key(modality)
    records = [
        r for r in read_manifest(path) if not r.more and model.modality_key(r.modality) == key
    ]
    if not records:
        raise ConfigError(f"eval.data.{modality}: expected records of {key} in {path}, got none")
    tasks = ["caption"] * any(r.caption for r in records) + ["qa"] * any(r.turns for r in records)
    return [HeldOut(key, t, str(Path(path).resolve())) for t in tasks]


class StageEval:
    """A stage's held-out evaluation: captions of its eval modalities (all it trains on
    captions unless `eval.modalities` says) on the shapes world, QA where it trains on
    questions, every set of its `eval.data` manifests, each output task's own metric, and
    the mean routing weights per modality. `notes`: what it cannot evaluate, and why."""

    def __init__(self, cfg: Any, sources: dict[str, Any], model: Any) -> None:
        self.cfg, e = cfg, cfg.eval
        self.notes: list[str] = []
        manifests = {model.modality_key(m): p for m, p in e.data.items()}
        if e.modalities is not None:
            modalities = [model.modality_key(m) for m in e.modalities]
        else:
            modalities = []
            for key, s in sorted(sources.items()):
                if not (s.modality and s.task.captions) or s.modality in modalities:
                    continue
                if s.cfg.data == SYNTHETIC or (
                    s.modality not in manifests
                    and isinstance(model.modalities[s.modality], Renders)
                ):
                    modalities.append(s.modality)
                if s.cfg.data != SYNTHETIC and s.modality not in manifests:
                    self.notes.append(
                        f"data.{key} trains on {Path(s.cfg.data).name} but eval.data names no "
                        f"held-out manifest for {s.modality}: its accuracy on that data is not "
                        f"measured (eval: {{data: {{{s.modality}: test.jsonl}}}})"
                    )
            modalities.sort()
        asked = {
            s.modality for s in sources.values() if s.task.questions and s.cfg.data == SYNTHETIC
        }
        self.sets = [HeldOut(m) for m in modalities]
        self.sets += [HeldOut(m, "qa") for m in modalities if m in asked]
        for m, path in manifests.items():
            self.sets += manifest_sets(model, m, path)
        self.tasks = sorted({s.task.name for s in sources.values()} & set(output_tasks()))

    @property
    def modalities(self) -> list[str]:
        return [s.modality for s in self.sets if s.task == "caption" and s.data == SYNTHETIC]

    def __bool__(self) -> bool:
        return bool(self.sets or self.tasks)

    def __call__(self, model: Any, extra: list[HeldOut] = (), *, only=None) -> dict[str, Any]:
        """The held-out record: {results, qa, manifests, routing, outputs, held_out (rows)}
        of the stage's sets and `extra` ones (`only`: those sets alone, nothing else)."""
        e, seed = self.cfg.eval, self.cfg.seed + 1
        sets = (
            list(only)
            if only is not None
            else [*self.sets, *(s for s in extra if s not in self.sets)]
        )
        record: dict[str, Any] = {"results": {}}
        rows = []
        for s in sets:
            result = self.read(model, s, seed)
            if s.data != SYNTHETIC:
                record.setdefault("manifests", {})[s.label] = {**result, "data": s.data}
            else:
                record.setdefault("results" if s.task == "caption" else "qa", {})[s.modality] = (
                    result
                )
            rows.append(row(s, result, seed, e.samples))
        record["held_out"] = rows
        if only is not None:
            return record
        routing, per_query = {}, {}
        # perceiver and MLP projections have no router
        for m in [m for m in record["results"] if isinstance(model.projector(m), Routed)]:
            x = torch.cat([model.preprocess(s.input, m) for s in shapes.sample(m, 16, model=model)])
            report = model.routing_report(m, x)
            routing[m], per_query[m] = report["per_expert"], report["per_query"]
        record |= {"routing": routing, "routing_per_query": per_query}
        if self.tasks:
            record["outputs"] = {
                t: TASKS.get(t).evaluate(model, samples=e.samples, seed=seed) for t in self.tasks
            }
        return record

    def read(self, model: Any, s: HeldOut, seed: int) -> dict[str, Any]:
        """Set `s`'s result (`evaluate` or `evaluate_qa`)."""
        e = self.cfg.eval
        data = None if s.data == SYNTHETIC else s.data
        if s.task == "caption":
            return evaluate(
                model,
                s.modality,
                samples=e.samples,
                seed=seed,
                data=data,
                max_new_tokens=e.max_new_tokens,
            )
        return evaluate_qa(model, s.modality, samples=e.samples, seed=seed, data=data)
