"""The run's plots from metrics.jsonl: every step's loss smoothed, accuracy over the stage as
lines (bars when there is one figure per set), expert load as a grid a person can read."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from onellm.training import plots
from onellm.training.plots import accuracy_series, plot_run, smooth, starting_figures
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT

MODS = ["audio", "depth", "fmri", "image", "imu", "normal", "point", "video"]


def synthetic_run(tmp_path, *, evals=(100, 200), parents=True):
    """A stage's metrics.jsonl (and report.json) as the recipe writes them: 200 steps over
    eight modalities routed through three experts, logged every 20 steps with every step's
    loss, and held-out figures at `evals`."""
    rng = np.random.default_rng(0)
    lines = [{"event": "start", "step": 0}]
    for step in range(20, 201, 20):
        losses = [[s, MODS[s % 8], float(2 * math.exp(-s / 50) + rng.random())] for s in range(step - 19, step + 1)]  # fmt: skip
        routing = {m: {"load": [0.3, 0.3, 0.4], "entropy": 1.0 - step / 400} for m in MODS}
        lines.append(
            {"event": "train", "step": step, "loss": losses[-1][2], "source": losses[-1][1],
             "losses": losses, "routing": routing, "expert_share": [0.3, 0.3, 0.4]}
        )  # fmt: skip
    for step in evals:
        rows = [{"modality": m, "task": "caption", "data": "synthetic", "n": 100,
                 "accuracy": 0.5 + step / 500} for m in MODS]  # fmt: skip
        rows += [
            {"modality": "image", "task": "qa", "data": "synthetic", "n": 300, "accuracy": 0.8}
        ]
        lines.append(
            {"event": "eval", "step": step, "held_out": rows,
             "results": {m: {"exact_match": 0.5 + step / 500} for m in MODS},
             "routing": {m: [0.3, 0.3, 0.4] for m in MODS},
             "routing_per_query": {m: [[0.3, 0.3, 0.4]] * 4 for m in MODS}}
        )  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if parents:
        rows = [
            {"modality": m, "task": "caption", "data": "synthetic", "parent": 0.9} for m in MODS
        ]
        (tmp_path / "report.json").write_text(json.dumps({"rows": rows}))
    return tmp_path


def test_every_plot_is_made_at_a_readable_shape(tmp_path):
    written = plot_run(synthetic_run(tmp_path))
    names = {p.name for p in written}
    assert names == {
        "loss.png",
        "accuracy.png",
        "expert_load.png",
        "router_entropy.png",
        "routing.png",
        "routing_per_query.png",
    }
    for path in written:
        w, h = Image.open(path).size
        assert 300 <= w <= 1400 and 300 <= h <= 1000 and w / h <= 2.7, (path.name, w, h)
    w, h = Image.open(tmp_path / "plots" / "expert_load.png").size  # 9 panels: 3 x 3
    assert 0.9 <= w / h <= 1.6, (w, h)  # was 2684 x 352 in one row


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_run draws, by file name, kept open to look into."""
    drawn = {}

    def keep(fig, path):
        drawn[path.name] = fig
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield drawn
    plots.pyplot().close("all")


def test_loss_is_every_step_smoothed_on_a_log_scale(tmp_path, figures):
    plot_run(synthetic_run(tmp_path))
    (ax,) = figures["loss.png"].axes
    dots = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert sum(len(d.get_xdata()) for d in dots) == 200  # every step, not one in twenty
    assert len(ax.get_lines()) == 2 * len(MODS) and ax.get_yscale() == "log"


def test_smoothing_is_a_centred_geometric_moving_average():
    assert smooth([5.0] * 7, 3) == pytest.approx([5.0] * 7)
    # centred: the first value averages itself and the next; geometric: log-space mean
    assert smooth([1.0, 100.0, 1.0, 100.0], 3) == pytest.approx([10.0, 100 ** (1 / 3), 100 ** (2 / 3), 10.0])  # fmt: skip
    assert smooth([-1.0, 1.0], 3) == pytest.approx([0.0, 0.0])  # not all positive: plain mean


def test_accuracy_reads_held_out_rows_and_older_records_and_starts_from_the_parent(tmp_path):
    run = synthetic_run(tmp_path)
    records = [r for r in read_metrics(run) if r["event"] == "eval"]
    series = accuracy_series(records)
    assert series[("image", "caption", "synthetic")] == [(100, 0.7), (200, 0.9)]
    assert series[("image", "qa", "synthetic")] == [(100, 0.8), (200, 0.8)]
    older = [{k: v for k, v in r.items() if k != "held_out"} for r in records]
    assert accuracy_series(older)[("image", "caption", "synthetic")] == [(100, 0.7), (200, 0.9)]
    assert starting_figures(run)[("video", "caption", "synthetic")] == 0.9
    assert starting_figures(tmp_path / "nowhere") == {}


def test_accuracy_is_lines_from_the_starting_model_or_bars_for_one_figure(tmp_path, figures):
    plot_run(synthetic_run(tmp_path / "a"))
    (ax, *_) = figures["accuracy.png"].axes
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    assert len(lines) == 9 and not ax.patches  # 8 caption sets + image QA
    image = [line for line in lines if line.get_color() == "C3" and line.get_linestyle() == "-"]
    assert list(image[0].get_xdata()) == [0, 100, 200]  # from the starting model
    plot_run(synthetic_run(tmp_path / "b", evals=(200,), parents=False))
    (ax, *_) = figures["accuracy.png"].axes
    assert len(ax.patches) == 9 and ax.get_title().endswith("at step 200")


def test_the_training_log_carries_every_steps_loss(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / 'run'}",
            "steps=5",
            "batch_size=2",
            "log_every=2",
            "data.image.pool=8",
        ],
    )
    recipe = Recipe(cfg, quiet=True).setup()
    recipe.train()
    train = [r for r in read_metrics(tmp_path / "run") if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 5]
    steps = [s for r in train for s in r["losses"]]
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5] and {s[1] for s in steps} == {"image"}
    assert [r["loss"] for r in train] == pytest.approx(
        [r["losses"][-1][2] for r in train], abs=1e-5
    )
