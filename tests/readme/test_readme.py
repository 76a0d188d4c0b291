"""The README runs as written: every code block in it is run here, or checked, or skipped
with the reason and the test that covers it instead. A block added to the README without
an entry in PLAN fails `test_every_block_has_a_plan`, so the two stay in step.

Commands run in a folder laid out as the README says (conftest.py: the demo's runs saved at
runs/demo/stage*/final, the files its examples name); training commands run short."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tomllib
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT
from tests.readme.blocks import commands, inside, onellm_argv, readme_blocks, run_cli
from tests.readme.serving import check_openai_example, check_serve_commands

BLOCKS = {b.id: b for b in readme_blocks()}
CUDA = torch.cuda.is_available()

# what each block is, and how it is checked
PLAN = {
    "Quick start (a fresh Linux machine with Python 3.10+) #1": "skip: CI runs `make test` "
    "itself; the demo's stages are the stage configs run below, and .ci/install_check.sh "
    "runs `onellm demo` from an installed wheel",
    "Quick start (a fresh Linux machine with Python 3.10+) #2": "shell",
    "Quick start (a fresh Linux machine with Python 3.10+) #3": "output",
    "Chat #1": "python",
    "Chat #2": "python, trained outputs",
    "Chat #3": "shell",
    "Serve: an OpenAI-compatible API and a web UI #1": "serve",
    "Serve: an OpenAI-compatible API and a web UI #2": "serve",
    "Serve: an OpenAI-compatible API and a web UI #3": "serve",
    "Evaluate in lmms-eval #1": "skip: needs the benchmarks' files (downloaded by hand) and "
    "the eval extra; tests/lmms/test_lmms_cli.py runs both commands on a tiny saved model "
    "over shapes-world files",
    "Train: progressive alignment, one modality after another #1": "shell",
    "Train: progressive alignment, one modality after another #2": "manifest",
    "Data at scale: a million files, shards, workers, cached features #1": "shell",
    "Mixture of experts: sparse routers, balance, upcycling, expert use #1": "yaml",
    "On a GPU #1": "gpu",
    "On a GPU #2": "gpu",
    "Building blocks #1": "python",
    "Official OneLLM weights #1": "skip: needs the official 7B weights; "
    "tests/checkpoints/test_convert.py runs from_onellm on the conformance fixture",
    "Other designs: projection kinds and MoAI #1": "yaml",
    "Other designs: projection kinds and MoAI #2": "shell",
    "Other designs: projection kinds and MoAI #3": "output",
    "Add a modality in one file #1": "shell",
    "Add a modality in one file #2": "python",
    "Add a training task in one file #1": "python",
    "Extend it from your own package #1": "toml",
    "Layout #1": "layout",
    "Conformance #1": "shell",
    "Benchmarks #1": "skip: `make bench` takes minutes; tests/test_bench.py runs each "
    "benchmark at its smallest",
    "Benchmarks #2": "output",
}

# lines of shell blocks not run here, and why (the first words of the line)
NOT_RUN = {
    "pip install": "installing: .ci/install_check.sh installs the wheel in a fresh venv",
    "cd ~/anywhere": "the demo from any folder: .ci/install_check.sh runs it from a temp dir",
    "torchrun": "two processes: tests/training/test_distributed.py runs FSDP2 under torchrun",
    ".venv/bin/python -m bench.projection_study": "a ~40 min study; tests/test_bench.py",
}
# what a short run changes in a line as written, and why
SHORTER = {
    "data_workers=8": "data_workers=1",  # one worker process proves the path on 2 cores
    "shard-{000000..000099}": "shard-{000000..000000}",  # six records make one shard
}


def test_every_block_has_a_plan():
    assert set(BLOCKS) == set(PLAN), "README blocks and PLAN differ: update PLAN"


def blocks_of(kind: str) -> list[str]:
    return [k for k, v in PLAN.items() if v == kind]


@pytest.mark.parametrize("block", blocks_of("shell"))
def test_shell_block(block, workspace):
    for command in commands(BLOCKS[block].text):
        if any(command.startswith(p) for p in NOT_RUN):
            continue
        for long, short in SHORTER.items():
            command = command.replace(long, short)
        argv = onellm_argv(command)
        if command.startswith("python -c"):
            code = re.fullmatch(r'python -c "(.*)"', command)[1]
            run = subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True)
            assert run.returncode == 0, run.stderr.decode()
        elif argv is not None and argv[0] == "conformance":
            fixture = ROOT / "../shared/conformance/onellm-reference-A"
            if not fixture.exists():
                pytest.skip(f"{fixture} is absent (CI has ../shared)")
            with inside(ROOT):
                table = run_cli(ROOT, argv).splitlines()[1:]  # output, max abs, ok or not
                assert table and all(line.split()[2] == "ok" for line in table), table
        elif argv is not None:
            chat_session = argv[0] == "chat" and not any(a.startswith("--") for a in argv[2:])
            run_cli(workspace, argv, stdin="hello\n/quit\n" if chat_session else "")
        else:
            raise AssertionError(f"{block}: no rule runs {command!r}; add one to NOT_RUN")


def exec_block(block: str, ws: Path, **names) -> dict:
    namespace = {"__name__": "readme", **names}
    with inside(ws):
        exec(compile(BLOCKS[block].text, f"README.md:{BLOCKS[block].line}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("block", blocks_of("python") + blocks_of("python, trained outputs"))
def test_python_block(block, workspace, monkeypatch):
    from onellm import OneLLM
    from onellm.registry import EXTENSION_POINTS

    # what the README's other blocks import, and what a user has in hand
    names = {"OneLLM": OneLLM, "heat_map": np.load(workspace / "heat.npy")}
    # what a block registers (the README's task) is gone after it, for the suites that list
    # every registered plug-in
    for registry in EXTENSION_POINTS.values():
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    if PLAN[block] == "python, trained outputs":
        force_output_tokens(monkeypatch)
    namespace = exec_block(block, workspace, **names)
    # `x = ...  # (1, 3, 64, 64)`: the shapes the README states are the shapes one gets
    for line in BLOCKS[block].text.splitlines():
        m = re.match(r"(\w+) = .*#\s*(\([\d, ]+\))", line)
        if m:
            assert tuple(namespace[m[1]].shape) == ast.literal_eval(m[2]), line


def force_output_tokens(monkeypatch) -> None:
    """The untrained saved model stands in for stage 5's: each reply's first tokens are the
    output tokens its prompt asks for ("segment" -> <seg>, "draw" -> a run of <gen>), as the
    trained model's are, so masks and images come out through the code a user's take."""
    from transformers import LogitsProcessorList

    from onellm import OneLLM
    from tests.conftest import ForceAt

    chat = OneLLM.chat

    def forced(model, inputs=None, *args, prompt=None, **kwargs):
        ids = model.outputs.token_ids
        if "segment" in (prompt or ""):
            kwargs["logits_processor"] = LogitsProcessorList([ForceAt(ids["seg"], 0)])
        elif "draw" in (prompt or ""):
            n = model.config.outputs["gen"].tokens
            kwargs["logits_processor"] = LogitsProcessorList(
                [ForceAt(ids["gen"], i) for i in range(n)]
            )
        return chat(model, inputs, *args, prompt=prompt, **kwargs)

    monkeypatch.setattr(OneLLM, "chat", forced)


def test_serve_blocks(workspace):
    serve, curl, client = blocks_of("serve")
    lines = commands(BLOCKS[serve].text)
    check_serve_commands(lines, workspace)
    check_openai_example(BLOCKS[curl].text, BLOCKS[client].text, workspace, onellm_argv(lines[0]))


def test_manifest_block(tmp_path):
    from onellm.data.manifest import read_manifest

    text = BLOCKS[blocks_of("manifest")[0]].text
    for name in ("img/1.png", "img/2.png", "a.png", "a_depth.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB" if "depth" not in name else "I;16", (8, 8)).save(tmp_path / name)
    for name in ("clips/a.wav", "clips/b.wav"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, np.zeros(1600, np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(text)
    records = read_manifest(tmp_path / "m.jsonl")
    assert [r.modality for r in records] == [
        json.loads(x).get("modality", "image") for x in text.splitlines()
    ]


@pytest.mark.parametrize("block", blocks_of("yaml"))
def test_yaml_block(block, tmp_path):
    """Model keys build a model from tiny.yaml with them; stage keys load into a stage."""
    from onellm import OneLLM
    from onellm.training.stage import load_stage

    keys = yaml.safe_load(BLOCKS[block].text)
    model_keys = {k: v for k, v in keys.items() if k in ("projection", "moai")}
    stage_keys = {k: v for k, v in keys.items() if k not in model_keys}
    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    for k, v in model_keys.items():
        config[k] = {**config.get(k, {}), **v} if isinstance(v, dict) else v
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    OneLLM.from_config(tmp_path / "model.yaml")
    if stage_keys:
        stage = yaml.safe_load((ROOT / "configs/stages/stage2_video_audio_point.yaml").read_text())
        (tmp_path / "stage.yaml").write_text(yaml.safe_dump({**stage, **stage_keys}))
        cfg = load_stage(tmp_path / "stage.yaml")
        for k in stage_keys:
            assert getattr(cfg, k) is not None, k


def test_toml_block():
    from onellm.registry import EXTENSION_POINTS

    groups = tomllib.loads(BLOCKS[blocks_of("toml")[0]].text)["project"]["entry-points"]
    known = {r.group for r in EXTENSION_POINTS.values()}
    assert set(groups) <= known, set(groups) - known


def test_layout_block():
    """Every folder and file the layout names exists where it says."""
    text = BLOCKS[blocks_of("layout")[0]].text
    for top in re.findall(r"^(\w+/)", text, re.M):
        assert (ROOT / top).is_dir(), top
    for name in re.findall(r"([\w/-]+\.(?:py|yaml))\b", text):
        found = list(ROOT.glob(f"**/{name}"))
        assert found, f"the layout names {name}, which is nowhere in the repository"


@pytest.mark.gpu
@pytest.mark.parametrize("block", blocks_of("gpu"))
def test_gpu_block(block, workspace):
    if not CUDA:
        pytest.skip("needs CUDA")
    if BLOCKS[block].lang == "python":
        exec_block(block, workspace, OneLLM=__import__("onellm").OneLLM)
        return
    for command in commands(BLOCKS[block].text):
        argv = onellm_argv(command)
        if argv is not None:
            run_cli(workspace, argv)
