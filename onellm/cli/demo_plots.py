"""The demo's own figures in DIR/plots/ (each stage's are in its run directory):
accuracy_table.png, the stage x modality table as a heat map, and outputs.png, the output
experts' held-out metrics beside the mask and the image the demo's chats made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from onellm.training.plots import pyplot, save_figure


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
    return save_figure(fig, path)


def plot_outputs(stages: list[dict], chats: list[dict], path: Path) -> Path:
    """Bars: each output metric (seg_miou, gen_color_accuracy, ...) after the stage that
    trained it; then each chat's saved picture (the mask over its input, the image)."""
    metrics = [(f"{k}\n({s['name']})", v) for s in stages for k, v in s["outputs"].items()]
    pictures = [c for c in chats if c.get("file")]
    fig, axes = pyplot().subplots(
        1, 1 + len(pictures), figsize=(4 + 3.2 * len(pictures), 3.6), layout="constrained",
        width_ratios=[1.3] + [1.0] * len(pictures), squeeze=False,
    )  # fmt: skip
    ax = axes[0][0]
    drawn = ax.bar([m for m, _ in metrics], [v for _, v in metrics], color="C0")
    ax.bar_label(drawn, [f"{v:.2f}" for _, v in metrics])
    ax.set(ylim=(0, 1.1), title="output experts, held out")
    ax.tick_params(axis="x", labelsize=7)
    for ax, chat in zip(axes[0][1:], pictures, strict=True):
        ax.imshow(np.asarray(Image.open(chat["file"]).convert("RGB")))
        ax.set_title(f"{chat['prompt']}\n{chat['truth']}", fontsize=8)
        ax.axis("off")
    return save_figure(fig, path)
