import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from onellm.cli.main import main
from onellm.inference.interactive import session
from onellm.training.task import output_tasks
from tests.conftest import TINY


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_chat_answers_once_with_the_prompt_after_the_options(png, capsys, tiny_model):
    rc = main(
        [
            "chat",
            str(TINY),
            "--modality",
            "image",
            "--input",
            str(png),
            "What is this?",
            "--max-new-tokens",
            "6",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out.strip()
    expected = tiny_model.chat(
        str(png), modality="image", prompt="What is this?", max_new_tokens=6
    ).text
    assert printed == expected


def test_chat_reports_bad_input_in_one_line(png, capsys):
    rc = main(["chat", str(TINY), "--modality", "image", "--input", str(png) + ".missing", "hi"])
    assert rc == 2
    assert "onellm: error: image: expected a readable file" in capsys.readouterr().err


def test_info_and_its_bad_override(capsys):
    assert main(["info", str(TINY)]) == 0
    assert "projection" in capsys.readouterr().out
    assert main(["info", str(TINY), "projection.num_qeries=3"]) == 2
    assert "unknown key 'projection.num_qeries'" in capsys.readouterr().err


def test_interactive_session_keeps_history_and_switches_input(tiny_model, png):
    lines = iter(
        [
            "What is this?",
            "And the colour?",
            f"/input {png}",
            "/modality image",
            "Describe it.",
            "/reset",
            "",
            "/bogus",
            "/quit",
            "never read",
        ]
    )
    out = []
    history = session(
        tiny_model,
        read=lambda _: next(lines),
        write=lambda *a, **k: out.append("".join(map(str, a))),
        max_new_tokens=4,
    )
    # after /reset the empty line asked for a caption, which adds no turn
    assert history == []
    assert any("unknown command /bogus" in o for o in out)
    assert next(lines) == "never read"  # /quit ended it


def reader(lines):
    it = iter(lines)

    def read(_prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    return read


def test_interactive_history_grows(tiny_model):
    history = session(
        tiny_model,
        read=reader(["hello", "and then?"]),
        write=lambda *a, **k: None,
        max_new_tokens=3,
    )
    assert [q for q, _ in history] == ["hello", "and then?"]


def test_interactive_bad_file_keeps_the_session(tiny_model):
    out = []
    history = session(
        tiny_model,
        read=reader(["/input /no/such.png", "/modality image", "hi", "/noinput", "hello"]),
        write=lambda *a, **k: out.append(" ".join(map(str, a))),
        max_new_tokens=3,
    )
    assert any("error: image: expected a readable file" in o for o in out)
    assert [q for q, _ in history] == ["hello"]


def test_chat_takes_a_paired_input_in_either_form(png, tmp_path, capsys, tiny_model):
    depth = tmp_path / "d.png"
    Image.fromarray(np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.uint8)).save(depth)
    want = tiny_model.chat(
        {"rgb": str(png), "depth": str(depth)},
        modality="depth",
        prompt="Is it near or far?",
        max_new_tokens=4,
    ).text
    for given in (
        ["--input", str(png), "--input", str(depth)],
        ["--input", f"rgb={png},depth={depth}"],
        ["--input", f"rgb={png}", "--input", f"depth={depth}"],
    ):
        torch.manual_seed(0)  # the random tiny model's weights, as the fixture's
        rc = main(
            [
                "chat",
                str(TINY),
                "--modality",
                "depth",
                *given,
                "Is it near or far?",
                "--max-new-tokens",
                "4",
            ]
        )
        assert rc == 0 and capsys.readouterr().out.strip() == want
    rc = main(
        [
            "chat",
            str(TINY),
            "--modality",
            "depth",
            "--input",
            f"rgb={png}",
            "--input",
            str(depth),
            "hi",
        ]
    )
    assert (
        rc == 2 and "--input: expected every part as name=path or none" in capsys.readouterr().err
    )


def test_shards_and_cache_features_verbs(tmp_path, png, capsys):
    (tmp_path / "m.jsonl").write_text(
        "".join(
            f'{{"modality": "image", "input": "{png}", "caption": "a red circle {i}"}}\n'
            for i in range(3)
        )
    )
    assert (
        main(["shards", str(tmp_path / "m.jsonl"), str(tmp_path / "out"), "--per-shard", "2"]) == 0
    )
    pattern = str(tmp_path / "out" / "image" / "shard-{000000..000001}.tar")
    assert capsys.readouterr().out.strip() == f"image: data: {pattern}"
    stage = "configs/stages/stage1_image.yaml"
    args = [
        "init_from=configs/tiny.yaml",
        f"output_dir={tmp_path / 'run'}",
        f"data.image.data={pattern}",
    ]
    assert main(["cache-features", stage, *args]) == 2  # no folder named
    assert "feature_cache: name the folder" in capsys.readouterr().err
    assert main(["cache-features", stage, *args, f"feature_cache={tmp_path / 'f'}"]) == 0
    assert "data.image: cached in" in capsys.readouterr().out
    (folder,) = (tmp_path / "f").iterdir()
    assert (folder / "done.json").is_file() and not (tmp_path / "run").exists()


def test_the_parser_answers_before_torch_loads():
    # each verb's module loads torch once the verb is parsed: `onellm --help` answers at once
    code = (
        "import sys; from onellm.cli.main import build_parser; "
        "build_parser().parse_args(['info', 'x']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_eval_tasks_are_qa_and_the_registered_tasks_with_a_metric_of_their_own(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", str(TINY), "--task", "caption"])  # a task, with no metric of its own
    assert e.value.code == 2
    tasks = ", ".join(repr(t) for t in ["qa", *output_tasks()])
    assert f"invalid choice: 'caption' (choose from {tasks})" in capsys.readouterr().err
    assert {"seg", "gen", "sam", "t2i"} <= set(output_tasks())


def test_overrides_after_an_option_are_overrides():
    """`onellm train STAGE --resume steps=10`: argparse alone stops at --resume."""
    from onellm.cli.main import parse

    args = parse(["train", "stage1_image", "--resume", "steps=10", "eval.samples=4"])
    assert args.resume and args.overrides == ["steps=10", "eval.samples=4"]
    args = parse(["train", "stage1_image", "steps=3", "--resume", "batch_size=2"])
    assert args.overrides == ["steps=3", "batch_size=2"]
    with pytest.raises(SystemExit):  # a stray word is still refused
        parse(["train", "stage1_image", "--resume", "oops"])
