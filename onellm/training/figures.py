"""matplotlib for the run's plots (onellm/training/plots.py, expert_plots.py), loaded on
the first plot drawn, drawing to files only."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def pyplot():
    """matplotlib's pyplot, drawing to files only (no display)."""
    import matplotlib  # heavy (~1 s): loaded when the first plot is drawn, not with training

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # with the Agg backend chosen above

    return plt


def save_figure(fig, path: Path) -> Path:
    if fig.get_layout_engine() is None:  # the newer plots lay out as they draw
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
