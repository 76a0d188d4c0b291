"""bench/projection_study.py's table: results.json has exactly the issue's shape, rows
no_aux, aux_text, moai, moai_shuffled, each the four kinds' accuracies in 0-1."""

from __future__ import annotations

import json

from bench import projection_study as study

KINDS = ["existence", "position", "relation", "count"]


def write_run(run, task: str, score: float) -> None:
    run.mkdir(parents=True)
    outputs = {task: {**dict.fromkeys(KINDS, score), "accuracy": score, "n": 200}}
    lines = [
        {"event": "train", "step": 1, "loss": 2.0},
        {"event": "eval", "step": 5, "outputs": {task: {**outputs[task], "position": 0.0}}},
        {"event": "eval", "step": 10, "final": True, "outputs": outputs},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))


def test_results_have_the_issues_shape(tmp_path):
    write_run(tmp_path / "no_aux", "sceneqa", 0.25)
    write_run(tmp_path / "aux_text", "sceneqa_aux", 0.9)
    write_run(tmp_path / "moai", "sceneqa", 0.6)
    shuffled = {**dict.fromkeys(KINDS, 0.3), "accuracy": 0.3}
    (tmp_path / "moai" / "controls.json").write_text(json.dumps({"shuffled": shuffled}))
    table = study.results(tmp_path)
    assert list(table) == ["no_aux", "aux_text", "moai", "moai_shuffled"]
    assert all(list(row) == KINDS for row in table.values())
    assert table["no_aux"]["position"] == 0.25  # the final evaluation, not an earlier one
    assert table["aux_text"]["count"] == 0.9 and table["moai_shuffled"]["relation"] == 0.3
    lines = study.printed(table).splitlines()
    assert len(lines) == 5 and lines[2].split()[:2] == ["aux_text", "90.0%"]


def test_the_plan_gives_each_row_its_task_start_and_output(tmp_path):
    commands = study.plan(tmp_path, 200)
    assert {"stage0", "sam", "no_aux", "aux_text", "moai_experts", "moai"} <= set(commands)
    assert "data.image.task=sceneqa_aux" in commands["aux_text"]
    assert "init_from=${vars.root}/stage0/final" in commands["no_aux"]
    assert commands["moai_controls"][-1] == str(tmp_path / "moai" / "controls.json")
