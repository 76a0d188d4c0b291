import numpy as np
import pytest
from PIL import Image

from onellm.cli import main
from onellm.interactive import session
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
    lines = iter(["What is this?", "And the colour?", f"/input {png}", "/modality image", "Describe it.",
                  "/reset", "", "/bogus", "/quit", "never read"])  # fmt: skip
    out = []
    history = session(tiny_model, read=lambda _: next(lines), write=lambda *a, **k: out.append("".join(map(str, a))),
                      max_new_tokens=4)  # fmt: skip
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
    history = session(tiny_model, read=reader(["/input /no/such.png", "/modality image", "hi", "/noinput", "hello"]), write=lambda *a, **k: out.append(" ".join(map(str, a))),
                      max_new_tokens=3)  # fmt: skip
    assert any("error: image: expected a readable file" in o for o in out)
    assert [q for q, _ in history] == ["hello"]
