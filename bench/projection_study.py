"""The projection and MoAI study (docs/moai.md): spatial questions about several shapes
(existence, position, relation, count; onellm/data/scene_qa.py), held out.

    .venv/bin/python -m bench.projection_study [--root runs/study] [--samples 200]

From ROOT/stage0/final (configs/stages/study_stage0.yaml: the demo's stage 0, pretrained
tiny LLM and CLIP, whose LM also reads the questions' text), with the same data, steps,
batch and schedule for each row:
  1. configs/stages/study_sam.yaml       the tiny SAM learns masks (MoAI's `sam` source)
  2. configs/stages/study_sceneqa.yaml   once per projection kind: upm, perceiver, mlp
  3. configs/stages/study_moai.yaml      UPM + MoAI's compressor and mixer over SAM's words,
     against the UPM run trained as many steps more without them (`upm, more steps`)
A stage whose ROOT/<name>/final exists is not run again. Prints the table (held-out exact
match per question kind, 200 scenes, one question of each kind per scene) and writes
ROOT/projection_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

STAGES = Path(__file__).resolve().parents[1] / "configs" / "stages"
KINDS = ("existence", "position", "relation", "count")


def stage(root: Path, name: str, config: str, overrides: list[str]) -> float | None:
    """Train a stage into ROOT/name unless it is there; -> its wall seconds (None: kept)."""
    from onellm.training.recipe import train
    from onellm.training.stage import load_stage

    if (root / name / "final").is_dir():
        return None
    t = time.perf_counter()
    train(load_stage(STAGES / config, [f"vars.root={root}", *overrides]), quiet=False)
    return time.perf_counter() - t


def scores(run: Path) -> dict[str, float]:
    """The final held-out sceneqa record of a run (its metrics.jsonl)."""
    for line in reversed((run / "metrics.jsonl").read_text().splitlines()):
        record = json.loads(line)
        if record.get("event") == "eval" and "sceneqa" in record.get("outputs", {}):
            return {k: record["outputs"]["sceneqa"][k] for k in (*KINDS, "accuracy")}
    raise RuntimeError(f"{run}: no sceneqa evaluation in metrics.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/study")
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    root, evals = Path(args.root), [f"eval.samples={args.samples}"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # beside other work, 2 threads thrash
    times: dict[str, float | None] = {}
    if not (root / "stage0" / "final").is_dir():
        times["stage0"] = stage(root, "stage0", "study_stage0.yaml", [])
    times["sam"] = stage(root, "sam", "study_sam.yaml", [])
    rows = {}
    for kind in ("upm", "perceiver", "mlp"):
        times[kind] = stage(
            root, f"sceneqa-{kind}", "study_sceneqa.yaml", [f"vars.kind={kind}", *evals]
        )
        rows[kind] = f"sceneqa-{kind}"
    more = [
        "init_from=${vars.root}/sceneqa-upm/final",
        "output_dir=${vars.root}/sceneqa-upm-more",
        "steps=400",
        "model_overrides=[]",
        *evals,
    ]
    times["upm, more steps"] = stage(root, "sceneqa-upm-more", "study_sceneqa.yaml", more)
    times["upm + MoAI mixer"] = stage(root, "moai", "study_moai.yaml", evals)
    rows |= {"upm, more steps": "sceneqa-upm-more", "upm + MoAI mixer": "moai"}
    table = {name: scores(root / run) for name, run in rows.items()}
    print(f"\n{'held-out exact match':24}" + "".join(f"{k:>11}" for k in (*KINDS, "accuracy")))
    for name, s in table.items():
        print(f"{name:24}" + "".join(f"{100 * s[k]:10.1f}%" for k in (*KINDS, "accuracy")))
    (root / "projection_study.json").write_text(
        json.dumps({"table": table, "seconds": times}, indent=1)
    )


if __name__ == "__main__":
    main()
