"""Plots a person can look at: RUN/plots/{loss,accuracy,routing}.png from metrics.jsonl, and
where the stage routes through the projection, expert_load.png and router_entropy.png."""

from __future__ import annotations

import functools
import json
from pathlib import Path


@functools.cache
def pyplot():
    """matplotlib's pyplot, drawing to files only (no display)."""
    import matplotlib  # heavy (~1 s): loaded when the first plot is drawn, not with training

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # with the Agg backend chosen above

    return plt


def plot_run(run: str | Path) -> list[Path]:
    run = Path(run)
    records = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    out = run / "plots"
    out.mkdir(exist_ok=True)
    written = []
    train = [r for r in records if r["event"] == "train"]
    if train:
        fig, ax = pyplot().subplots(figsize=(7, 4))
        for source in sorted({r["source"] for r in train}):
            pts = [(r["step"], r["loss"]) for r in train if r["source"] == source]
            ax.plot(*zip(*pts, strict=True), ".-", label=source, alpha=0.8)
        ax.set(
            xlabel="step",
            ylabel="loss (last step logged)",
            title=f"{run.name}: training loss",
            yscale="log",
        )
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "loss.png"))
    used = [r for r in train if r.get("routing")]
    if used:
        written += plot_expert_use(used, out, run.name)
    evals = [r for r in records if r["event"] == "eval"]
    if evals:
        fig, ax = pyplot().subplots(figsize=(7, 4))
        for m in sorted({m for r in evals for m in r["results"]}):
            pts = [(r["step"], r["results"][m]["exact_match"]) for r in evals if m in r["results"]]
            line = ax.plot(*zip(*pts, strict=True), "o-", label=m)[0]
            qa = [(r["step"], r["qa"][m]["qa_accuracy"]) for r in evals if m in r.get("qa", {})]
            if qa:  # dashed, same colour: question answering
                ax.plot(*zip(*qa, strict=True), "s--", color=line.get_color(), label=f"{m} QA")
        ax.set(
            xlabel="step",
            ylabel="held-out exact match (dashed: QA)",
            ylim=(-0.02, 1.02),
            title=f"{run.name}: accuracy",
        )
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "accuracy.png"))
        routing = evals[-1].get("routing", {})
        if routing:
            written.append(
                plot_routing(
                    routing, out / "routing.png", f"{run.name}: mean routing weight per expert"
                )
            )
        per_query = evals[-1].get("routing_per_query", {})
        if per_query:
            written.append(plot_routing_per_query(per_query, out / "routing_per_query.png"))
    return written


def plot_expert_use(train: list[dict], out: Path, name: str) -> list[Path]:
    """Per modality, each expert's share of the routing weight over the steps (stacked),
    and all modalities together with the collapse alarm's steps; the router entropy."""
    mods = sorted({m for r in train for m in r["routing"]})
    k = len(next(iter(train[-1]["routing"].values()))["load"])
    panels = [*mods, "all"]
    fig, axes = pyplot().subplots(
        1, len(panels), figsize=(2.6 * len(panels) + 1, 3.2), squeeze=False
    )
    for ax, m in zip(axes[0], panels, strict=True):
        rows = [r for r in train if m == "all" or m in r["routing"]]
        steps = [r["step"] for r in rows]
        if m == "all":
            loads = [[s or 0.0 for s in r["expert_share"]] for r in rows]
        else:
            loads = [r["routing"][m]["load"] for r in rows]
        ax.stackplot(steps, *zip(*loads, strict=True), labels=[f"expert {e}" for e in range(k)])
        alarms = [r["step"] for r in rows if m == "all" and r.get("collapse")]
        if alarms:
            ax.plot(alarms, [1.0] * len(alarms), "rx", label="collapse alarm")
        ax.set(title=m, xlabel="step", ylim=(0, 1))
    axes[0][0].set_ylabel("share of routing weight")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: expert load")
    written = [_save(fig, out / "expert_load.png")]
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for m in mods:
        pts = [(r["step"], r["routing"][m]["entropy"]) for r in train if m in r["routing"]]
        ax.plot(*zip(*pts, strict=True), ".-", label=m)
    ax.set(xlabel="step", ylabel="mean router entropy (nats)", title=f"{name}: router entropy")
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "router_entropy.png"))
    return written


def plot_routing_per_query(per_query: dict[str, list[list[float]]], path: Path) -> Path:
    """One heat map per modality: query token (rows) x expert (columns), mean weight."""
    names = list(per_query)
    fig, axes = pyplot().subplots(
        1, len(names), figsize=(1.3 * len(names) + 1.5, 3.5), squeeze=False
    )
    for ax, m in zip(axes[0], names, strict=True):
        im = ax.imshow(per_query[m], vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.set(title=m, xlabel="expert")
        ax.set_xticks(range(len(per_query[m][0])))
    axes[0][0].set_ylabel("query token")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.04)
    fig.suptitle("routing weight per query token", y=1.02)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_routing(routing: dict[str, list[float]], path: Path, title: str) -> Path:
    """Stacked bars: for each modality, its mean weight on each projection expert."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    names = list(routing)
    bottom = [0.0] * len(names)
    for k in range(len(next(iter(routing.values())))):
        vals = [routing[m][k] for m in names]
        ax.bar(names, vals, bottom=bottom, label=f"expert {k}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(ylabel="mean routing weight", title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_table(stages: list[dict], path: Path) -> Path:
    """The demo's stage x modality accuracy table as a heat map."""
    mods = sorted(
        {m for s in stages for m in s["accuracy"]},
        key=lambda m: min(i for i, s in enumerate(stages) if m in s["accuracy"]),
    )
    fig, ax = pyplot().subplots(figsize=(1.1 * len(mods) + 2, 0.6 * len(stages) + 1.5))
    grid = [[s["accuracy"].get(m, float("nan")) for m in mods] for s in stages]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(
                    j, i, f"{100 * v:.0f}", ha="center", va="center", color="w" if v < 0.6 else "k"
                )
    ax.set_xticks(range(len(mods)), mods, rotation=30)
    ax.set_yticks(range(len(stages)), [s["name"] for s in stages])
    ax.set_title("held-out exact match (%) after each stage")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
