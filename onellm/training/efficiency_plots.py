"""RUN/plots/efficiency.png: the efficiency figures each log step holds
(onellm/training/efficiency.py) over the stage's steps, one panel each."""

from __future__ import annotations

from pathlib import Path

from onellm.training.figures import pyplot, save_figure


def plot_efficiency(train: list[dict], path: Path, name: str) -> Path:
    """LLM positions a second, samples a second by modality, padding share and MFU."""
    fig, axes = pyplot().subplots(2, 2, figsize=(10, 6), sharex=True)
    steps = [r["step"] for r in train]
    panels = [
        ("tokens_per_s", "LLM positions / s"),
        ("samples_per_s.", "samples / s by modality"),
        ("padding_share", "padding share of LLM positions"),
        ("mfu", "MFU (model FLOPs / peak)"),
    ]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        names = sorted({k for r in train for k in r if k.startswith(key)})
        for k in names:
            ax.plot(steps, [r.get(k, float("nan")) for r in train], label=k.removeprefix(key))
        if len(names) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(f"{name}: efficiency")
    return save_figure(fig, path)
