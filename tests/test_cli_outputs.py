"""The CLI keeps a reply's outputs: `onellm chat` and its session save masks and images and
print their paths; `onellm serve` passes its options to the server."""

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessorList

from onellm import OneLLM
from onellm.cli.main import main
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
    session(tiny_model, read=read, write=lambda *a, **k: out.append("".join(map(str, a))),
            save_dir=str(tmp_path / "saved"), max_new_tokens=4, logits_processor=force)  # fmt: skip
    saved = [line.removeprefix("saved ") for line in out if line.startswith("saved ")]
    assert len(saved) == 2 and saved[0] != saved[1]  # one mask per reply, none overwritten
    assert all(Image.open(p).size == (48, 40) for p in saved)


def test_serve_passes_its_options_to_the_server(tmp_path, monkeypatch):
    import onellm.serve.app as app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda model, **kw: seen.update(model=model, **kw))
    args = ["serve", str(TINY), "--port", "8123", "--load-in-8bit", "--allow-dir", str(tmp_path),
            "--max-body-mb", "4", "--max-batch", "3", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert str(seen["model"].quantization) == "8bit (torchao)"
    assert (seen["host"], seen["port"], seen["model_id"]) == ("127.0.0.1", 8123, "tiny")
    assert (seen["allow_dir"], seen["max_body_mb"], seen["max_batch"]) == (str(tmp_path), 4, 3)
    assert main(["serve", str(TINY), "--load-in-4bit", "--device", "cpu"]) == 2  # CPU: no NF4
