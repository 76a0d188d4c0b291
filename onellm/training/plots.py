"""Plots a person can look at: RUN/plots/{loss,accuracy,routing}.png from metrics.jsonl, and
where the stage routes (the projection, the LLM's MoE layers), expert_load.png and
router_entropy.png.

loss.png: every step's loss (faint dots; runs from before the `losses` field have one step
in `log_every`) and, per source, its moving average. accuracy.png: each held-out set over
the stage's evaluations as a line, from the starting model's figure at step 0 where the
stage's report.json has it (onellm/training/summary.py); a stage evaluated once, with no
starting figure, as bars. expert_load.png and router_entropy.png: onellm/training/expert_plots.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onellm.training.efficiency_plots import plot_efficiency
from onellm.training.expert_plots import plot_expert_use
from onellm.training.figures import pyplot, save_figure

STYLES = {"caption": "-", "qa": "--"}


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
        written.append(plot_loss(train, out / "loss.png", run.name))
    if any("tokens_per_s" in r for r in train):  # runs from before it have none
        written.append(plot_efficiency(train, out / "efficiency.png", run.name))
    used = [r for r in train if r.get("routing") or r.get("llm_routing")]
    if used:
        written += plot_expert_use(used, out, run.name)
    evals = [r for r in records if r["event"] == "eval"]
    if evals:
        if accuracy_series(evals):  # a stage of output tasks alone (5a) has no held-out set
            written.append(
                plot_accuracy(evals, starting_figures(run), out / "accuracy.png", run.name)
            )
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


def smooth(values: list[float], window: int) -> np.ndarray:
    """A centred moving average over `window` values (of the logs where all are positive:
    the geometric mean, as a log axis reads it)."""
    y = np.asarray(values, dtype=float)
    positive = bool((y > 0).all())
    y = np.log(y) if positive else y
    sums, i, h = np.concatenate([[0.0], np.cumsum(y)]), np.arange(len(y)), window // 2
    lo, hi = np.maximum(0, i - h), np.minimum(len(y), i + h + 1)
    mean = (sums[hi] - sums[lo]) / (hi - lo)
    return np.exp(mean) if positive else mean


def plot_loss(train: list[dict], path: Path, name: str) -> Path:
    """Each source's loss at every step (dots) and its moving average (line)."""
    steps = [tuple(s) for r in train for s in r.get("losses", [])]
    every = bool(steps)
    if not every:  # logged before `losses`: the last step of each `log_every`
        steps = [(r["step"], r["source"], r["loss"]) for r in train]
    fig, ax = pyplot().subplots(figsize=(8, 4.5), layout="constrained")
    for i, source in enumerate(sorted({s for _, s, _ in steps})):
        x, y = zip(*[(t, v) for t, s, v in steps if s == source], strict=True)
        window = max(1, min(50, len(y) // 8))
        ax.plot(x, y, ".", ms=2.5 if every else 4, alpha=0.3, color=f"C{i % 10}")
        ax.plot(x, smooth(list(y), window), "-", lw=1.6, color=f"C{i % 10}", label=source)
    positive = all(v > 0 for _, _, v in steps)
    what = "every step" if every else "the logged steps"
    ax.set(
        xlabel="step",
        ylabel="loss",
        yscale="log" if positive else "linear",
        title=f"{name}: training loss ({what}: dots; moving average: lines)",
    )
    ticker = pyplot().matplotlib.ticker
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 6.2, not 6.2x10^0
    ax.yaxis.set_major_formatter(plain)
    losses = [v for _, _, v in steps]
    narrow = positive and max(losses) < 10 * min(losses)  # within a decade: label the minors
    ax.yaxis.set_minor_formatter(plain if narrow else ticker.NullFormatter())
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)


def starting_figures(run: Path) -> dict[tuple[str, str, str], float]:
    """The starting model's held-out figures, by set, from the stage's report.json."""
    path = run / "report.json"
    rows = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    return {
        (r["modality"], r["task"], r.get("data", "synthetic")): r["parent"]
        for r in rows
        if r.get("parent") is not None
    }


def accuracy_series(evals: list[dict]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """{(modality, task, data): [(step, accuracy), ...]} over the eval records: their
    `held_out` rows, or (older runs) their caption `results` and `qa`."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in evals:
        rows = r.get("held_out") or [
            *({"modality": m, "task": "caption", "accuracy": v["exact_match"]}
              for m, v in r.get("results", {}).items()),
            *({"modality": m, "task": "qa", "accuracy": v["qa_accuracy"]}
              for m, v in r.get("qa", {}).items()),
        ]  # fmt: skip
        for row in rows:
            key = (row["modality"], row["task"], row.get("data", "synthetic"))
            series.setdefault(key, []).append((r["step"], row["accuracy"]))
    return series


def plot_accuracy(
    evals: list[dict], start: dict[tuple[str, str, str], float], path: Path, name: str
) -> Path:
    """Held-out accuracy per set over the stage (colour: modality; line: captions, questions
    or a manifest), from the starting model's figure (hollow, step 0) where known; bars
    where there is one figure per set only."""
    series = accuracy_series(evals)
    for key, points in series.items():
        if key in start:
            points.insert(0, (0, start[key]))
    mods = sorted({m for m, _, _ in series})
    colour = {m: f"C{i % 10}" for i, m in enumerate(mods)}
    fig, ax = pyplot().subplots(figsize=(8, 4.5), layout="constrained")
    bars = max(len(p) for p in series.values()) == 1  # evaluated once, no starting figure
    if bars:
        keys = sorted(series)
        values = [series[k][0][1] for k in keys]
        drawn = ax.bar([set_label(k) for k in keys], values, color=[colour[k[0]] for k in keys])
        for bar, k in zip(drawn, keys, strict=True):
            bar.set_hatch("" if k[1] == "caption" else "//")
        ax.bar_label(drawn, [f"{100 * v:.0f}" for v in values], fontsize=7)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        title, lowest = f"{name}: held-out accuracy at step {evals[-1]['step']}", 0.0
    else:
        for (m, task, data), points in sorted(series.items()):
            ax.plot(
                *zip(*points, strict=True), style(task, data), marker="o", ms=4, color=colour[m]
            )
            if (m, task, data) in start:
                ax.plot(0, start[(m, task, data)], "o", ms=7, mfc="white", color=colour[m])
        ax.set_xlabel("step (0: the starting model)" if start else "step")
        title, lowest = f"{name}: held-out accuracy", min(v for p in series.values() for _, v in p)
    ax.set(ylabel="held-out exact match", title=title, ylim=(max(0, lowest - 0.05), 1.015))
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 1.0])
    ax.yaxis.set_major_formatter(pyplot().matplotlib.ticker.PercentFormatter(1.0))
    handles = legend(mods, colour, series, bars=bars, start=bool(start))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def style(task: str, data: str) -> str:
    """A set's line: solid captions, dashed questions, dotted a manifest's."""
    return STYLES.get(task, "-") if data == "synthetic" else ":"


def legend(mods: list[str], colour: dict, series: dict, *, bars: bool, start: bool) -> list:
    """One entry per modality (its colour) and one per kind of set (its line or hatch)."""
    mpl = pyplot().matplotlib
    handles = [mpl.patches.Patch(color=colour[m], label=m) for m in mods]
    for task, data in sorted({(t, d if d == "synthetic" else "") for _, t, d in series}):
        label = "captions" if task == "caption" else "questions"
        label += "" if data else ", manifest"
        if bars:
            hatch = "" if task == "caption" else "//"
            handles.append(mpl.patches.Patch(fill=False, hatch=hatch, label=label))
        else:
            handles.append(mpl.lines.Line2D([], [], color="k", ls=style(task, data), label=label))
    if start and not bars:
        handles.append(
            mpl.lines.Line2D([], [], color="k", marker="o", mfc="w", ls="", label="starting model")
        )
    return handles


def set_label(key: tuple[str, str, str]) -> str:
    m, task, data = key
    where = "" if data == "synthetic" else f" {Path(data).name}"
    return f"{m}{where}{' QA' if task == 'qa' else ''}"


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
    return save_figure(fig, path)
