"""The experts' use over a stage, from metrics.jsonl's train records (onellm/training/moe.py):

expert_load.png     the projection's (`routing`): a panel per modality and one for all
                    together, each expert's share of the routing weight over the steps
                    (stacked; its last share in the title), the collapse alarm's steps
                    marked; then each MoE layer of the LLM's (`llm_routing`): its load
                    per modality (text too) over the stage as stacked bars, and all
                    modalities' over the steps
router_entropy.png  a panel per pool: each modality's mean router entropy
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onellm.training.figures import pyplot, save_figure

PROJECTION = "projection"


def pools_of(train: list[dict]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """{pool: [(step, {routing, expert_share, collapse?})]}: the projection's figures (the
    record's own keys) and each LLM layer's (`llm_routing[layer]`)."""
    pools: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in train:
        if r.get("routing"):
            pools.setdefault(PROJECTION, []).append((r["step"], r))
        for layer, use in (r.get("llm_routing") or {}).items():
            pools.setdefault(f"LLM {layer}", []).append((r["step"], use))
    return pools


def plot_expert_use(train: list[dict], out: Path, name: str) -> list[Path]:
    """expert_load.png and router_entropy.png (see the module doc)."""
    pools = pools_of(train)
    mods = {p: sorted({m for _, u in rows for m in u["routing"]}) for p, rows in pools.items()}
    cols = min(3, max(len(m) + 1 if p == PROJECTION else 2 for p, m in mods.items()))
    panels: list[tuple[str, str]] = []  # (pool, modality | "all" | "bars"), a pool a new row
    for pool in pools:
        kinds = [*mods[pool], "all"] if pool == PROJECTION else ["bars", "all"]
        panels += [(pool, m) for m in kinds] + [("", "")] * (-len(kinds) % cols)
    rows = len(panels) // cols
    fig, axes = pyplot().subplots(
        rows, cols, figsize=(3.3 * cols, 2.3 * rows + 0.8), squeeze=False, layout="constrained"
    )
    for ax, (pool, m) in zip(axes.flat, panels, strict=True):
        if not pool:
            ax.set_visible(False)
        elif m == "bars":
            bars_panel(ax, pools[pool], mods[pool])
            ax.set_title(f"{pool}: load per modality (stage mean)", fontsize=8)
        else:
            load_panel(ax, pools[pool], m)
            where = "" if pool == PROJECTION else f"{pool}, "
            ax.set_title(f"{where}{m}: {ax.get_title()}", fontsize=8)
            ax.set_xlabel("step")
    handles, labels = max(  # the panel naming the most experts (the pools' counts differ)
        (ax.get_legend_handles_labels() for ax in axes.flat if ax.get_visible()),
        key=lambda hl: len(hl[1]),
    )
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.suptitle(f"{name}: expert load (each expert's share of the routing weight)")
    written = [save_figure(fig, out / "expert_load.png")]
    fig, axes = pyplot().subplots(
        len(pools), 1, figsize=(8, 1 + 3.5 * len(pools)), squeeze=False, layout="constrained"
    )
    for ax, (pool, rows_p) in zip(axes[:, 0], pools.items(), strict=True):
        for m in mods[pool]:
            pts = [(s, u["routing"][m]["entropy"]) for s, u in rows_p if m in u["routing"]]
            ax.plot(*zip(*pts, strict=True), ".-", label=m)
        ax.set(xlabel="step", ylabel="mean router entropy (nats)", title=pool)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: router entropy")
    written.append(save_figure(fig, out / "router_entropy.png"))
    return written


def bars_panel(ax: Any, rows: list[tuple[int, dict[str, Any]]], mods: list[str]) -> None:
    """Stacked bars, one per modality: each expert's share of its routing weight over the
    whole stage (the logged windows weighted by their positions)."""
    means = []
    for m in mods:
        windows = [u["routing"][m] for _, u in rows if m in u["routing"]]
        total = sum(w["tokens"] for w in windows) or 1
        k = len(windows[0]["load"])
        means.append([sum(w["tokens"] * w["load"][e] for w in windows) / total for e in range(k)])
    bottom = [0.0] * len(mods)
    for e in range(len(means[0])):
        share = [row[e] for row in means]
        ax.bar(mods, share, bottom=bottom, label=f"expert {e}")
        bottom = [b + v for b, v in zip(bottom, share, strict=True)]
    ax.set(ylim=(0, 1))
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)


def load_panel(ax: Any, rows: list[tuple[int, dict[str, Any]]], m: str) -> None:
    """One modality's (or, `all`, every modality's) expert shares over the steps."""
    rows_m = [(s, u) for s, u in rows if m == "all" or m in u["routing"]]
    steps = [s for s, _ in rows_m]
    if m == "all":
        loads = [[s or 0.0 for s in u["expert_share"]] for _, u in rows_m]
    else:
        loads = [u["routing"][m]["load"] for _, u in rows_m]
    k = len(loads[-1])
    ax.stackplot(steps, *zip(*loads, strict=True), labels=[f"expert {e}" for e in range(k)])
    alarms = [s for s, u in rows_m if m == "all" and u.get("collapse")]
    if alarms:
        ax.plot(alarms, [1.0] * len(alarms), "rx", label="collapse alarm")
    ax.set(ylim=(0, 1))
    ax.set_title("/".join(f"{100 * s:.0f}" for s in loads[-1]) + "%")
