"""The same recipe under torchrun: 2 gloo processes with FSDP2 (and 2 data workers each) ==
1 process reading in-process, same global batch; with per-modality LoRA experts in the LLM
trained beside the projection (an expert one rank's rows did not use: its gradient is
averaged as zero there, tests/training/test_llm_experts_distributed.py)."""

import json
import os
import subprocess
import sys

from onellm import OneLLM
from tests.conftest import ROOT

ARGS = [
    "init_from=configs/tiny.yaml",
    "steps=4",
    "batch_size=4",
    "grad_accum=2",
    "log_every=1",
    "eval.modalities=[]",
    "data={image: {pool: 32}, audio: {pool: 32}}",
    "trainable=[projection.*, tokenizers.*, llm.*lora_*]",
    'model_overrides=["llm_experts={kind: lora_per_modality, r: 4}"]',
]


def run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


def test_two_gloo_processes_give_the_losses_of_one(tmp_path):
    stage = "configs/stages/stage2_video_audio_point.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "onellm.cli", "train", stage, *ARGS]
    run([sys.executable, *train, f"output_dir={tmp_path / 'one'}"], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # each rank's share decoded by its own 2 workers
    run([*torchrun, *train, f"output_dir={tmp_path / 'two'}", "data_workers=2"], env)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4, (one, two)
    start = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2
    # only rank 0 wrote: one metrics file with one start event, and a loadable final model
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["event"] == "start" for line in lines) == 1
    assert OneLLM.from_pretrained(tmp_path / "two" / "final") is not None
