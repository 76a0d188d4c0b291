"""The command's start: a bad path or config answers before torch loads, and the libraries'
start-up notices stay off the terminal unless --verbose."""

import os
import subprocess
import sys
import warnings

import pytest

from onellm.cli.quiet import quiet
from tests.conftest import ROOT

NOTICES = ("is an Enum subclass", "Unable to import `torchao`", "Loading weights")


def onellm(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return subprocess.run(
        [sys.executable, "-m", "onellm.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize(
    "args, said",
    [
        (["info", "/nonexistent"], "/nonexistent: not a saved onellm model"),
        (["info", "tiny", "projection.num_qeries=3"], "unknown key 'projection.num_qeries'"),
        (["eval", "tiny", "--data", "/no/test.jsonl"], "--data: expected a JSONL file"),
        (["train", "no_such_stage"], "config 'no_such_stage': no such file"),
        (["train", "stage1_image", "steps"], "override 'steps': expected key=value"),
        (["chat", "tiny", "--modality", "image", "--input", "/no.png"], "image: expected a"),
    ],
)
def test_a_bad_path_or_config_is_one_line_before_torch_loads(args, said):
    code = (
        "import sys; from onellm.cli.main import main; "
        f"rc = main({args!r}); print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["2", "False"], out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("onellm: error: ") and said in line


def test_the_libraries_notices_show_only_with_verbose(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "run")
    plain = onellm("info", str(tmp_path / "run"))
    assert plain.returncode == 0 and "projection" in plain.stdout
    assert not [n for n in NOTICES if n in plain.stderr], plain.stderr
    loud = onellm("info", str(tmp_path / "run"), "--verbose")
    assert loud.returncode == 0 and all(n in loud.stderr for n in NOTICES), loud.stderr


def test_quiet_ignores_future_warnings_and_keeps_others(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "")  # as it was, after the test
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet(verbose=True)
        warnings.warn("shown with --verbose", FutureWarning, stacklevel=1)
        quiet()
        warnings.warn("`x` is deprecated and will be removed in v6", FutureWarning, stacklevel=1)
        warnings.warn("a user's problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["shown with --verbose", "a user's problem"]
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
