"""The CLI keeps a reply's outputs: `onellm chat` and its session save masks and images and
print their paths; `onellm serve` passes its options to the server, and says in one line
which extra to install when its libraries are missing; `onellm demo --decoders` shows a
chat per output task."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessorList

from onellm import OneLLM
from onellm.cli.demo import output_chats
from onellm.cli.main import main
from onellm.data import output_scenes as scenes
from onellm.inference.chat import ChatResponse
from onellm.inference.interactive import session
from tests.conftest import TINY, ForceAt


def test_chat_saves_masks_and_images_and_prints_their_paths(tmp_path, capsys, monkeypatch):
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[2:4, 1:5] = True
    reply = ChatResponse("here", masks=[mask], images=[Image.new("RGB", (4, 4), "green")])
    monkeypatch.setattr(OneLLM, "chat", lambda self, *a, **k: reply)
    assert main(["chat", str(TINY), "draw it", "--save-dir", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "here" and len(lines) == 3
    paths = [line.removeprefix("saved ") for line in lines[1:]]
    assert paths[0].endswith("-mask-0.png") and paths[1].endswith("-image-0.png")
    assert np.array_equal(np.array(Image.open(paths[0])) > 127, mask.numpy())
    assert Image.open(paths[1]).getpixel((0, 0)) == (0, 128, 0)


def test_a_session_saves_each_replys_mask(tiny_model, tmp_path):
    picture = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(picture)
    force = LogitsProcessorList([ForceAt(tiny_model.outputs.token_ids["seg"], 1)])
    lines = iter([f"/input {picture}", "/modality image", "segment it", "again"])

    def read(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out: list[str] = []
    session(
        tiny_model,
        read=read,
        write=lambda *a, **k: out.append("".join(map(str, a))),
        save_dir=str(tmp_path / "saved"),
        max_new_tokens=4,
        logits_processor=force,
    )
    saved = [line.removeprefix("saved ") for line in out if line.startswith("saved ")]
    assert len(saved) == 2 and saved[0] != saved[1]  # one mask per reply, none overwritten
    assert all(Image.open(p).size == (48, 40) for p in saved)


def test_serve_passes_its_options_to_the_server(tmp_path, monkeypatch):
    import onellm.serve.app as app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda model, **kw: seen.update(model=model, **kw))
    args = [
        "serve",
        str(TINY),
        "--port",
        "8123",
        "--load-in-8bit",
        "--allow-dir",
        str(tmp_path),
        "--max-body-mb",
        "4",
        "--max-batch",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert str(seen["model"].quantization) == "8bit (torchao)"
    assert (seen["host"], seen["port"], seen["model_id"]) == ("127.0.0.1", 8123, "tiny")
    assert (seen["allow_dir"], seen["max_body_mb"], seen["max_batch"]) == (str(tmp_path), 4, 3)
    assert main(["serve", str(TINY), "--load-in-4bit", "--device", "cpu"]) == 2  # CPU: no NF4


SERVE_EXTRA = "onellm: error: onellm serve needs the serve extra: pip install 'onellm[serve]'\n"


def test_serve_without_the_serve_extra_exits_with_one_line_naming_it():
    # gradio as if not installed, in a process of its own: the line, exit 2, no traceback
    code = (
        "import sys; sys.modules['gradio'] = None; from onellm.cli.main import main; "
        f"sys.exit(main(['serve', {str(TINY)!r}, '--device', 'cpu']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (2, "")
    # torch's own import-time warnings may come before it (torchao installed beside)
    assert out.stderr.endswith(SERVE_EXTRA) and "Traceback" not in out.stderr


@pytest.mark.parametrize("missing", ["fastapi", "uvicorn", "gradio"])
def test_serve_names_the_extra_for_each_library_of_it(missing, monkeypatch, capsys):
    import onellm.serve.app as app

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    monkeypatch.setattr(app, "serve", lambda model, **kw: None)
    assert main(["serve", str(TINY), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == SERVE_EXTRA
    # the API alone needs no Gradio
    assert main(["serve", str(TINY), "--device", "cpu", "--no-ui"]) == (missing != "gradio") * 2


def test_load_in_8bit_without_torchao_names_the_quant_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    assert main(["serve", str(TINY), "--load-in-8bit", "--device", "cpu"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("onellm: error: ") and line.endswith("pip install 'onellm[quant]'")


def test_the_demo_shows_each_output_tasks_chat_in_the_models_order(
    tiny_model, tmp_path, monkeypatch, capsys
):
    size = tiny_model.modalities["image"].input_shape()[-1]
    seg, gen = scenes.seg_scene(7, "test", size=size), scenes.gen_scene(3, "test", tokens=4)
    mask = torch.from_numpy(seg.mask)

    def chat(raw, modality=None, prompt=None, **kw):  # a model that answers each right
        if modality == "image" and prompt == seg.prompt:
            return ChatResponse("<seg>", masks=[mask])
        assert (raw, prompt) == (None, gen.prompt)
        return ChatResponse("<gen>", images=[Image.fromarray(gen.target)])

    monkeypatch.setattr(tiny_model, "chat", chat)
    chats = output_chats(tiny_model, tmp_path)
    seg_png, gen_png = tmp_path / "seg_chat.png", tmp_path / "gen_chat.png"
    assert chats == [
        {
            "modality": "image",
            "prompt": seg.prompt,
            "reply": "<seg>",
            "truth": "a mask, IoU 1.00",
            "file": str(seg_png),
        },
        {
            "modality": "text",
            "prompt": gen.prompt,
            "reply": "<gen>",
            "truth": f"an image, dominant colour {gen.attrs['colour']}",
            "file": str(gen_png),
        },
    ]
    assert capsys.readouterr().out.splitlines() == [
        f"[image] {seg.prompt} -> 1 mask(s), IoU 1.00   ({seg_png})",
        f"[text] {gen.prompt} -> 1 image(s), dominant colour {gen.attrs['colour']}   ({gen_png})",
    ]
    assert Image.open(seg_png).size == (512, 256) and Image.open(gen_png).size == (128, 128)
    # the input on the left, the mask drawn over it on the right: magenta where it is
    drawn = np.asarray(Image.open(seg_png).resize((2 * size, size), Image.NEAREST))
    left, right = drawn[:, :size], drawn[:, size:]
    assert np.array_equal(left, seg.image)
    assert np.array_equal(right[~seg.mask.astype(bool)], seg.image[~seg.mask.astype(bool)])
    assert (right[seg.mask.astype(bool)] != seg.image[seg.mask.astype(bool)]).any()
