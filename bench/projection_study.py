"""The MoAI study (docs/moai.md): does MoAI's compressor + mixer bring what outside vision
experts say into the tiny LLM? Spatial questions about several shapes (existence,
position, relation, count; onellm/data/scene_qa.py), 200 held-out scenes.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.projection_study [--root runs/moai_study]

  stage0    configs/stages/study_stage0.yaml: the demo's stage 0 plus the questions' text
            and description -> question -> answer text (sceneqa_describe_lm), measured
            on its own: text-only held-out accuracy from a description in the context
  sam       configs/stages/study_sam.yaml: the model's own tiny SAM (a MoAI source)
  no_aux    configs/stages/study_sceneqa.yaml: UPM projection + LoRA, 600 steps
  aux_text  the same with MoAI's auxiliary words before the question (task sceneqa_aux)
  moai      configs/stages/study_moai.yaml (MoAI step 1: compressor, mixer experts and the
            projection, 500 steps, the LLM frozen), study_moai_gates.yaml (step 2: the
            gating networks, 100 steps): 600 steps, as the rows without it
  controls  bench/moai_controls.py on aux_text and moai: loss and accuracy with another
            scene's words (moai_shuffled), tokens the words add to the context

Two lanes run at once, one process and one thread each (the 2-core machine): sam then
aux_text, and no_aux then (after sam) the MoAI steps. A stage whose ROOT/<name>/final
exists is kept (its seconds from ROOT/seconds.json). Prints the table and writes
ROOT/results.json (accuracies 0-1 per row and kind) and ROOT/details.json (losses,
seconds, tokens added to the context, the stage-0 description measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

STAGES = Path(__file__).resolve().parents[1] / "configs" / "stages"
KINDS = ("existence", "position", "relation", "count")
ROWS = {"no_aux": "sceneqa", "aux_text": "sceneqa_aux", "moai": "sceneqa"}
SCENEQA = str(STAGES / "study_sceneqa.yaml")


def plan(root: Path, samples: int, extra: list[str] = ()) -> dict[str, list[str]]:
    """Each stage's command line (`onellm train CONFIG OVERRIDES...` or the controls);
    `extra`: overrides for every training stage (a smoke run: steps=3)."""
    ev = [f"vars.root={root}", f"eval.samples={samples}"]
    train = [sys.executable, "-m", "onellm.cli", "train"]
    controls = [sys.executable, "-m", "bench.moai_controls", "--samples", str(samples)]
    commands = {
        "stage0": [*train, str(STAGES / "study_stage0.yaml"), *ev],
        "sam": [*train, str(STAGES / "study_sam.yaml"), f"vars.root={root}"],
        "no_aux": [*train, SCENEQA, *ev, "init_from=${vars.root}/stage0/final"]
        + ["output_dir=${vars.root}/no_aux"],
        "aux_text": [*train, SCENEQA, *ev, "data.image.task=sceneqa_aux"]
        + ["output_dir=${vars.root}/aux_text"],
        "moai_experts": [*train, str(STAGES / "study_moai.yaml"), f"vars.root={root}"],
        "moai": [*train, str(STAGES / "study_moai_gates.yaml"), *ev],
        "aux_text_controls": [*controls, str(root / "aux_text"), "--task", "sceneqa_aux"]
        + ["--out", str(root / "aux_text" / "controls.json")],
        "moai_controls": [*controls, str(root / "moai"), "--task", "sceneqa"]
        + ["--out", str(root / "moai" / "controls.json")],
    }
    return {k: c + list(extra) if c[:4] == train else c for k, c in commands.items()}


class Study:
    def __init__(self, root: Path, samples: int, extra: list[str] = ()) -> None:
        self.root, self.commands = root, plan(root, samples, extra)
        self.seconds_file = root / "seconds.json"
        self.seconds = (
            json.loads(self.seconds_file.read_text()) if self.seconds_file.exists() else {}
        )
        self.lock = threading.Lock()

    def done(self, name: str) -> bool:
        if name.endswith("_controls"):
            return (self.root / name.removesuffix("_controls") / "controls.json").exists()
        return (self.root / name / "final").is_dir()

    def run(self, name: str) -> None:
        """One stage as its own process of one thread, its output in ROOT/<name>.log."""
        if self.done(name):
            return
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t = time.perf_counter()
        with open(self.root / f"{name}.log", "w") as log:
            subprocess.run(
                self.commands[name], env=env, stdout=log, stderr=subprocess.STDOUT, check=True
            )
        with self.lock:
            self.seconds[name] = round(time.perf_counter() - t, 1)
            self.seconds_file.write_text(json.dumps(self.seconds, indent=1))

    def lanes(self) -> None:
        self.run("stage0")
        sam_done, failed = threading.Event(), []

        def lane(names: list[str]) -> None:
            try:
                for name in names:
                    if name == "wait for sam" and not sam_done.wait(timeout=7200):
                        raise RuntimeError("sam never finished")
                    if name != "wait for sam":
                        self.run(name)
                    if name == "sam":
                        sam_done.set()
            except Exception as e:  # the other lane must not wait on a failed one forever
                failed.append(e)
                sam_done.set()

        a = threading.Thread(target=lane, args=(["sam", "aux_text", "aux_text_controls"],))
        b_names = ["no_aux", "wait for sam", "moai_experts", "moai", "moai_controls"]
        b = threading.Thread(target=lane, args=(b_names,))
        a.start(), b.start(), a.join(), b.join()
        if failed:
            raise failed[0]


def scores(run: Path, task: str) -> dict[str, float]:
    """The final held-out record of `task` in a run's metrics.jsonl."""
    for line in reversed((run / "metrics.jsonl").read_text().splitlines()):
        record = json.loads(line)
        if record.get("event") == "eval" and task in record.get("outputs", {}):
            return {k: record["outputs"][task][k] for k in (*KINDS, "accuracy")}
    raise RuntimeError(f"{run}: no {task} evaluation in metrics.jsonl")


def results(root: Path) -> dict[str, dict[str, float]]:
    """The table: {no_aux, aux_text, moai, moai_shuffled} -> {kind: accuracy in 0-1}."""
    table = {row: scores(root / row, task) for row, task in ROWS.items()}
    shuffled = json.loads((root / "moai" / "controls.json").read_text())["shuffled"]
    table["moai_shuffled"] = shuffled
    return {row: {k: s[k] for k in KINDS} for row, s in table.items()}


def printed(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'held-out exact match':22}" + "".join(f"{k:>11}" for k in (*KINDS, "mean"))]
    for row, s in table.items():
        mean = sum(s.values()) / len(s)
        lines.append(f"{row:22}" + "".join(f"{100 * v:10.1f}%" for v in (*s.values(), mean)))
    return "\n".join(lines)


def cpu() -> str:
    """The CPU's model name and the cores this process may use."""
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        if Path("/proc/cpuinfo").exists()
        else [platform.machine()]
    )
    return f"{names[0]}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/moai_study")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="an override for every stage")
    args = ap.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    t, study = time.perf_counter(), Study(root, args.samples, args.set)
    study.lanes()
    table = results(root)
    controls = {
        r: json.loads((root / r / "controls.json").read_text()) for r in ("aux_text", "moai")
    }
    details = {
        "stage0_described_text_only": scores(root / "stage0", "sceneqa_describe_lm"),
        "seconds": study.seconds,
        "wall_seconds_this_call": round(time.perf_counter() - t, 1),
        "loss": {r: c["loss"] for r, c in controls.items()},
        "aux_text_shuffled": controls["aux_text"]["shuffled"],
        "tokens_added_to_context": {
            "no_aux": 0,
            "aux_text": controls["aux_text"]["tokens_added"],
            "moai": 0,  # its words are read by cross-attention, not put in the context
        },
        "tokens_read_by_cross_attention": {"moai": controls["moai"].get("tokens_read")},
        "cpu": cpu(),
        "load_average": os.getloadavg(),
    }
    (root / "results.json").write_text(json.dumps(table, indent=1))
    (root / "details.json").write_text(json.dumps(details, indent=1))
    print(printed(table))


if __name__ == "__main__":
    main()
