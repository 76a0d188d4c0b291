"""The end-of-stage summary: every held-out figure beside the parent model's, a warning for a
figure under the floor (with its reason where one is known), and a forgetting alarm for a
set the parent knew that dropped more than `eval.forgetting` points. Printed at the end of
`onellm train` and written to RUN/report.json.

Where the parent's figures come from: the parent's saved figures (its trained_on.json, or
its run's final evaluation) when they were taken on the same held-out draw (the same
manifest, or the same shapes-world seed and count) - greedy decoding makes a second
measurement identical, and the demo's stages would pay twice for it; otherwise the parent
is evaluated when the stage starts, on the draw the stage ends with. Sets the parent never
trained (a new modality, questions it was never asked) have no parent figure.

A reason for a low figure comes from the run's metrics.jsonl: any record with a `modality`
and a `reason` (e.g. a check before training that the captions' words are ones the frozen
LLM can say), or from replay (what was and was not replayed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onellm.training.lineage import Lineage
from onellm.training.replay import replay_reasons
from onellm.training.stage_eval import HeldOut, StageEval, can_evaluate


@dataclass
class Summary:
    rows: list[dict[str, Any]]  # {label, modality, task, data, n, accuracy, parent, parent_from}
    floor: float
    forgetting: float  # points
    warnings: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "forgetting_points": self.forgetting,
            "rows": self.rows,
            "warnings": self.warnings,
            "forgetting_alarms": self.alarms,
        }

    def alarm_lines(self) -> list[str]:
        """The alarms, those with the same reason on one line (report.json has each)."""
        by: dict[str, list[str]] = {}
        for r in (r for r in self.rows if r.get("forgot")):
            change = f"{100 * r['parent']:.0f}% -> {100 * r['accuracy']:.0f}%"
            by.setdefault(r.get("because", ""), []).append(f"{r['label']} {change}")
        return [
            f"FORGETTING ALARM: {', '.join(sets)}" + (f"; {why}" if why else "")
            for why, sets in by.items()
        ]

    def table(self, name: str) -> str:
        if not self.rows:
            return f"[{name}] no held-out captions or questions (eval.modalities names none)"
        width = max(len(r["label"]) for r in self.rows)
        lines = [
            f"[{name}] held-out exact match (floor {self.floor:.0%}; forgetting alarm at "
            f"-{self.forgetting:g} points against the parent model)",
            f"{'':<{width}}  {'parent':>7}  {'now':>5}  {'change':>7}    n",
        ]
        for r in self.rows:
            parent = "" if r["parent"] is None else f"{100 * r['parent']:.0f}%"
            change = "" if r["parent"] is None else f"{100 * (r['accuracy'] - r['parent']):+.0f}"
            flag = "  FORGOT" if r.get("forgot") else "  LOW" if r.get("low") else ""
            lines.append(
                f"{r['label']:<{width}}  {parent:>7}  {100 * r['accuracy']:>4.0f}%  {change:>7}"
                f"  {r['n']:>3}{flag}"
            )
        lines += self.alarm_lines()
        lines += [f"WARNING: {w}" for w in self.warnings]
        measured = {r["parent_from"] for r in self.rows if r["parent"] is not None}
        if measured:
            lines.append(f"parent figures: {', '.join(sorted(measured))}")
        return "\n".join(lines)


def output_lines(name: str, outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The final evaluation's task metrics (seg_miou, sam_point_miou, ...), one line a task."""
    return [
        f"[{name}] {task}, {o.get('n', '?')} held out: "
        + ", ".join(f"{k} {v:.3f}" for k, v in o.items() if isinstance(v, float))
        for task, o in outputs.items()
    ]


def summarise(
    rows: list[dict[str, Any]],
    parent: dict[HeldOut, tuple[float, str]],
    *,
    floor: float,
    forgetting: float,
    reasons: dict[str, list[str]] | None = None,
    drops: dict[str, list[str]] | None = None,
) -> Summary:
    """Compare this stage's held-out `rows` with the `parent`'s figures ({set: (accuracy,
    where it came from)}); `reasons`: {modality: why it may be low}; `drops`: {modality:
    what may explain a drop} (what replay did)."""
    reasons, drops = reasons or {}, drops or {}
    out = Summary([], floor, forgetting)
    for r in rows:
        s = HeldOut.of(r)
        before = parent.get(s)
        entry = {"label": s.label, **r, "parent": None, "parent_from": None}
        if before is not None:
            entry["parent"], entry["parent_from"] = before
        why = "; ".join(reasons.get(s.modality, []))
        drop = 0.0 if before is None else 100 * (before[0] - r["accuracy"])
        if before is not None and drop > forgetting:
            because = "; ".join([*drops.get(s.modality, []), *reasons.get(s.modality, [])])
            entry["forgot"], entry["because"] = True, because
            out.alarms.append(
                f"{s.label}: {before[0]:.0%} -> {r['accuracy']:.0%} ({-drop:+.0f} points)"
                + (f"; {because}" if because else "")
            )
        elif r["accuracy"] < floor:
            entry["low"] = True
            out.warnings.append(
                f"{s.label}: {r['accuracy']:.0%} is under the {floor:.0%} floor; "
                + (why or "no check recorded a reason")
            )
        out.rows.append(entry)
    return out


def reasons_from(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{modality: reasons} from a run's metrics records that name both."""
    out: dict[str, list[str]] = {}
    for rec in records:
        if isinstance(rec.get("modality"), str) and isinstance(rec.get("reason"), str):
            if rec["reason"] not in out.setdefault(rec["modality"], []):
                out[rec["modality"]].append(rec["reason"])
    return out


def parent_sets(parent: Lineage | None, stage: StageEval, model: Any) -> list[HeldOut]:
    """The sets the parent was measured on beside the stage's own, where the model can
    still read them (the modality is there; the manifest still is)."""
    theirs = dict.fromkeys(HeldOut.of(r) for r in (parent.held_out if parent else []))
    return [s for s in theirs if s not in stage.sets and can_evaluate(model, s)]


def parent_figures(
    parent: Lineage | None,
    sets: list[HeldOut],
    draw: tuple[int, int],
    measure: Callable[[list[HeldOut]], list[dict[str, Any]]],
) -> dict[HeldOut, tuple[float, str]]:
    """The parent's figure of each set it was trained for ({set: (accuracy, source)}): its
    saved one on the same `draw` (seed, samples), else `measure(sets)`'s rows (the parent
    evaluated now)."""
    figures, todo = {}, []
    for s in sets:
        if parent is None or not parent.knows(s.modality, s.task):
            continue  # a new modality or task: no parent figure to hold it to
        saved = parent.figure(s, *draw)
        if saved is not None:
            figures[s] = (saved["accuracy"], f"saved with the parent ({parent.origin})")
        else:
            todo.append(s)
    for r in measure(todo) if todo else []:
        figures[HeldOut.of(r)] = (r["accuracy"], "the parent measured at the stage's start")
    return figures


class StageSummary:
    """A stage's summary from its start (the parent's figures, the sets only the parent
    was measured on) to its end (`report`)."""

    def __init__(self, cfg: Any, parent: Lineage | None, replay: dict, stage: StageEval) -> None:
        self.cfg, self.parent, self.replay, self.stage = cfg, parent, replay, stage
        self.extra: list[HeldOut] = []
        self.figures: dict[HeldOut, tuple[float, str]] = {}

    def parent_figures(self, model: Any, *, measure: bool) -> None:
        """The sets the parent was measured on beside the stage's, and the parent's figures
        (`measure`: this process evaluates `model`, the starting one, where none is saved)."""
        if self.cfg.eval.parent:
            self.extra = parent_sets(self.parent, self.stage, model)
        if measure:
            self.figures = parent_figures(
                self.parent,
                [*self.stage.sets, *self.extra],
                (self.cfg.seed + 1, self.cfg.eval.samples),
                lambda sets: self.stage(model, only=sets)["held_out"],
            )

    def report(
        self, rows: list[dict[str, Any]], records: list[dict[str, Any]], final: Any, steps: int
    ) -> dict[str, Any]:
        """{"table": what `onellm train` prints, "json": RUN/report.json} from the final
        held-out `rows` and the run's metrics `records` (reasons)."""
        cfg = self.cfg
        summary = summarise(
            rows,
            self.figures,
            floor=cfg.eval.floor,
            forgetting=cfg.eval.forgetting,
            reasons=reasons_from(records),
            drops=replay_reasons(self.replay, self.parent),
        )
        summary.warnings += self.stage.notes
        head = {"stage": cfg.name, "init_from": cfg.init_from, "final_model": str(final)}
        report = head | {"steps": steps, "replay": self.replay, **summary.as_dict()}
        return {"table": summary.table(cfg.name), "json": report}
