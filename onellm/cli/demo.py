"""`onellm demo`: the whole progressive alignment on the tiny model and the shapes world.

stage 0 (tiny LLM and CLIP pretraining) -> 1 image -> 2 video, audio, point -> 3 depth,
normal, IMU, fMRI -> 4 instruction tuning -> 5 output experts (<seg> -> SAM masks, <gen> ->
UNet images, with the tiny SAM and UNet the repository keeps: configs/weights/); then a few
chats, a mask and an image among them. Prints the tables (rows: stages, columns:
modalities, cells: held-out exact match of captions, then of answers), seg_miou and
gen_color_accuracy, and writes DIR/report.json and DIR/plots/. `fast=True` (`onellm demo
--fast`) stops after stage 4.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from onellm.checkpoints.weights import sha256
from onellm.cli.demo_plots import plot_outputs, plot_table
from onellm.data import shapes
from onellm.model import OneLLM
from onellm.registry import TASKS
from onellm.training.recipe import read_metrics, train
from onellm.training.stage import load_stage

STAGES = (
    "stage0_pretrain",
    "stage1_image",
    "stage2_video_audio_point",
    "stage3_depth_normal_imu_fmri",
    "stage4_instruct",
)
# the output experts; their decoders' own pretraining (stage5a_decoder_pretrain, ~20 min)
# is not in the demo: its result is kept in the repository (docs/design-notes.md, "The
# whole mission in make demo")
DECODER_STAGES = ("stage5_decoders",)


def final_eval(run: Path) -> dict[str, Any]:
    """The stage's final held-out evaluation record (empty if it has none)."""
    finals = [r for r in read_metrics(run) if r["event"] == "eval" and r.get("final")]
    return finals[-1] if finals else {}


def final_accuracy(run: Path) -> dict[str, float]:
    """The exact match of the stage's final held-out evaluation, per modality."""
    return {m: v["exact_match"] for m, v in final_eval(run).get("results", {}).items()}


def final_qa(run: Path) -> dict[str, dict[str, Any]]:
    """The stage's final held-out question answering, per modality: accuracy and counts
    per question (stages that train instruction data)."""
    return {
        m: {"accuracy": v["qa_accuracy"], "by_question": v["by_question"]}
        for m, v in final_eval(run).get("qa", {}).items()
    }


def final_outputs(run: Path) -> dict[str, float]:
    """seg_miou / gen_color_accuracy of the stage's final evaluation (stages that train them)."""
    outs = final_eval(run).get("outputs", {})
    return {k: o[k] for t, o in outs.items() for k in TASKS.get(t).metrics if k in o}


def table(stages: list[dict[str, Any]], key: str = "accuracy", *, seconds: bool = True) -> str:
    """Rows: stages; columns: modalities; cells: `stage[key][modality]` as a percentage."""
    cell = (lambda v: v) if key == "accuracy" else (lambda v: v["accuracy"])  # noqa: E731
    mods: list[str] = []
    for s in stages:
        mods += [m for m in s[key] if m not in mods]
    width = max(len(s["name"]) for s in stages)
    lines = [" " * width + "".join(f"{m:>8}" for m in mods) + f"{'time':>8}" * seconds]
    for s in stages:
        cells = "".join(
            f"{100 * cell(s[key][m]):>7.0f}%" if m in s[key] else f"{'':>8}" for m in mods
        )
        lines.append(f"{s['name']:<{width}}{cells}" + f"{s['seconds']:>7.0f}s" * seconds)
    return "\n".join(lines)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    quiet: bool = False,
    steps_scale: float = 1.0,
    fast: bool = False,
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    out = Path(out)
    start = time.perf_counter()
    stages = []
    final = None
    for name in STAGES + DECODER_STAGES * (not fast):
        cfg = load_stage(name, [f"vars.root={out}", f"device={device}", *overrides])
        cfg.steps = max(1, round(cfg.steps * steps_scale))
        loaded = [{"path": p, "sha256": sha256(p)} for p in cfg.load_weights]
        for w in loaded:
            print(f"[{cfg.name}] loads {w['path']} (sha256 {w['sha256'][:16]}...)")
        t = time.perf_counter()
        final = train(cfg, quiet=quiet)
        run = Path(cfg.output_dir)
        stages.append(
            {
                "name": cfg.name,
                "accuracy": final_accuracy(run),
                "qa": final_qa(run),
                "outputs": final_outputs(run),
                "seconds": time.perf_counter() - t,
                "run": cfg.output_dir,
                "loaded": loaded,
                "samples": cfg.eval.samples,
            }
        )
    # the output experts' held-out metrics at the top level (the last stage that has each)
    outputs = {k: v for s in stages for k, v in s["outputs"].items()}
    report = {
        "stages": stages,
        **outputs,
        "wall_seconds": time.perf_counter() - start,
        "final_model": str(final),
    }
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plot_table([s for s in stages if s["accuracy"]], out / "plots" / "accuracy_table.png")
    report["chats"] = show_chats(final, out, outputs=bool(outputs), device=device)
    if outputs:  # each output metric after its stage, and the chats' mask and image
        plot_outputs(stages, report["chats"], out / "plots" / "outputs.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print("\nheld-out exact-match caption accuracy after each stage\n" + table(stages))
    asked = [s for s in stages if s["qa"]]
    if asked:  # from instruction tuning on: every question of held-out scenes, asked alone
        print(
            "\nheld-out question answering (exact match) after each stage\n"
            + table(asked, "qa", seconds=False)
        )
    for s in stages:
        for k, v in s["outputs"].items():
            print(f"{k:<20}{v:>6.2f}   ({s['samples']} held-out scenes, after {s['name']})")
    print(
        f"\nwall time {report['wall_seconds']:.0f} s; report {out / 'report.json'}; plots {out / 'plots'}"
    )
    print(f"chat with it:  onellm chat {final}")
    return report


def show_chats(
    final: Path, out: Path, *, outputs: bool = False, device: str = "auto"
) -> list[dict[str, str]]:
    """A few chats with the final model on held-out scenes; printed and returned. A mask
    or an image the model produces is saved under `out` as a PNG."""
    model = OneLLM.from_pretrained(final, device=device).eval()
    chats = []
    print()
    for modality, prompt in (
        ("image", None),
        ("image", "What colour is it?"),
        ("audio", "Is it low or high?"),
        ("imu", "What is the person doing?"),
        ("point", "What shape is it?"),
    ):
        scene = shapes.sample(modality, 1, split="test", seed=99, model=model)[0]
        reply = model.chat(scene.input, modality=modality, prompt=prompt).text
        truth = str(scene.caption if prompt is None else dict(scene.qa).get(prompt, scene.caption))
        chats.append(
            {"modality": modality, "prompt": prompt or "(caption)", "reply": reply, "truth": truth}
        )
        print(f"[{modality}] {prompt or '(caption)'} -> {reply!r}   (truth: {truth!r})")
    if outputs:
        chats += output_chats(model, out)
    return chats


@runtime_checkable
class ShowsChat(Protocol):
    """A task that shows its output in the demo (seg: a mask, gen: an image)."""

    def demo_chat(self, model: OneLLM, directory: Path) -> tuple[dict[str, str], str] | None:
        """One held-out chat, what it made saved under `directory` -> its record for
        report.json (modality, prompt, reply, truth, file) and the line printed; None if
        the model cannot hold it."""
        ...


def output_chats(model: OneLLM, out: Path) -> list[dict[str, str]]:
    """For each output kind of the model, the chats of the tasks training it that show one
    (seg: "segment the ..." and its mask; gen: "draw a ..." and its image), printed."""
    chats = []
    for kind in model.outputs:
        for _, task in TASKS.items():
            if task.output == kind and isinstance(task, ShowsChat):
                shown = task.demo_chat(model, out)
                if shown is not None:
                    chats.append(shown[0])
                    print(shown[1])
    return chats


def demo_verb(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        fast=args.fast,
        device=args.device,
        steps_scale=args.steps_scale,
        overrides=args.overrides,
    )
    return 0
