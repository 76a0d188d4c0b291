"""The Gradio UI without a browser: an upload slot per modality, chosen by what the
modality says it takes (a pair, pixels, an upload kind), a view per output kind of the
model (masks over the input, images in a gallery), and the UI's answer to a message with
an uploaded image (its reply text, the mask drawn over the input)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import LogitsProcessorList

from onellm.serve.app import create_app
from onellm.serve.ui import build_ui, output_views, turns, upload_slots
from tests.conftest import ForceAt
from tests.serve.conftest import LOCAL


def test_each_modality_gets_the_slot_for_what_it_takes(tiny_model):
    with gr.Blocks():
        listed = upload_slots(tiny_model)
    slots = {(key, part): widget for key, part, widget in listed}
    assert [p for k, p, _ in listed if k == "depth"] == ["rgb", "depth"]  # the image first
    assert isinstance(slots["image", None], gr.Image)  # pixels: a mask can be drawn on it
    assert isinstance(slots["audio", None], gr.Audio)  # upload = "audio"
    assert isinstance(slots["video", None], gr.Video)  # upload = "video"
    assert isinstance(slots["depth", "rgb"], gr.Image)  # a pair: rgb and its map
    assert isinstance(slots["depth", "depth"], gr.File)
    assert slots["depth", "depth"].elem_id == "input-depth-depth"
    assert isinstance(slots["point", None], gr.File)  # nothing said: a file
    assert {k for k, _ in slots} == set(tiny_model.modalities)


def test_each_output_kind_gets_a_view(tiny_model):
    with gr.Blocks():
        views = {kind: view for kind, _, view in output_views(tiny_model)}
    assert set(views) == set(tiny_model.outputs)
    assert isinstance(views["seg"], gr.AnnotatedImage)  # on_input: over the input
    assert (views["seg"].elem_id, views["seg"].label) == ("masks", "masks over the input")
    assert isinstance(views["gen"], gr.Gallery)
    assert (views["gen"].elem_id, views["gen"].label) == ("images", "generated images")


def uploaded(path) -> str:
    """`path` as the UI's upload route leaves it: a copy in Gradio's upload folder."""
    folder = Path(gr.utils.get_upload_folder()) / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    return shutil.copy(path, folder)


@pytest.mark.parametrize("kind", ["seg", "gen"])
def test_the_ui_answers_with_text_and_the_kinds_output(tiny_model, files, kind):
    token, n = tiny_model.outputs.token_ids[kind], tiny_model.outputs[kind].tokens
    force = LogitsProcessorList([ForceAt(token, i) for i in range(1, 1 + n)])
    app = create_app(tiny_model, ui=False, generate_kwargs={"logits_processor": force})
    with TestClient(app, base_url=LOCAL):  # runs the request queue the UI submits to
        ui = build_ui(app.state.service)
        respond = next(f.fn for f in ui.fns.values() if f.name == "respond")
        with gr.Blocks():
            keys = [key for key, _, _ in upload_slots(tiny_model)]
        values = [uploaded(files / "x.png") if key == "image" else None for key in keys]
        *_, last = respond("segment it", [], n + 2, 0.0, *values)
    history, kept, message, *shown, figure = last
    assert kept == history  # the session's history, kept on the server
    want = tiny_model.chat(
        str(files / "x.png"),
        modality="image",
        prompt="segment it",
        max_new_tokens=n + 2,
        logits_processor=force,
    )
    assert history[-1] == {"role": "assistant", "content": want.text} and message == ""
    by_kind = dict(zip(tiny_model.outputs, shown, strict=True))
    if kind == "seg":
        image, masks = by_kind["seg"]
        assert image.shape == (40, 48, 3) and [label for _, label in masks] == ["<seg> 1"]
        assert np.array_equal(masks[0][0] > 0.5, want.masks[0].numpy())
        assert by_kind["gen"] is None
    else:
        (picture,) = by_kind["gen"]
        assert isinstance(picture, Image.Image) and picture.size == (32, 32)
        assert by_kind["seg"] is None
    assert figure is not None  # the routing of the image's projection experts


def submitted(service) -> list:
    """The jobs the UI submits to the service's queue, in order (they still run)."""
    seen, submit = [], service.batcher.submit
    service.batcher.submit = lambda job: seen.append(job) or submit(job)
    return seen


def ui_respond(service):
    """The UI's respond generator, as Gradio calls it."""
    return next(f.fn for f in build_ui(service).fns.values() if f.name == "respond")


def test_a_two_turn_history_in_gradio_6s_message_format_reaches_the_prompt(tiny_model, files):
    # what gr.Chatbot.preprocess hands a function in Gradio 6: content as a list of parts
    sent = [
        {"role": "user", "content": [{"type": "text", "text": "what shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]},
        {"role": "user", "content": [{"type": "text", "text": "and colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    chatbot = gr.Chatbot()
    history = chatbot.preprocess(chatbot.data_model.model_validate(sent))
    assert history[0]["content"] == [{"type": "text", "text": "what shape?"}]
    assert turns(history) == [("what shape?", "a circle"), ("and colour?", "red")]
    assert turns([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]) == [
        ("hi", "yo")
    ]
    # the UI's third turn carries the two before it into the prompt, as model.chat does
    app = create_app(tiny_model, ui=False)
    seen = submitted(app.state.service)
    with TestClient(app, base_url=LOCAL):
        respond = ui_respond(app.state.service)
        with gr.Blocks():
            n = len(upload_slots(tiny_model))
        *_, last = respond("where is it?", history, 6, 0.0, *[None] * n)
    want = tiny_model.chat(prompt="where is it?", history=turns(history), max_new_tokens=6)
    assert last[0][-1] == {"role": "assistant", "content": want.text} and len(last[0]) == 6
    prompt = str(seen[0].conversation.segments)
    assert all(t in prompt for t in ("what shape?", "a circle", "and colour?", "red"))


def test_the_ui_reads_no_file_outside_its_upload_folder(tiny_model, files):
    app = create_app(tiny_model, ui=False)
    with TestClient(app, base_url=LOCAL):
        respond = next(
            f.fn for f in build_ui(app.state.service).fns.values() if f.name == "respond"
        )
        with gr.Blocks():
            keys = [key for key, _, _ in upload_slots(tiny_model)]
        values = [str(files / "x.png") if key == "image" else None for key in keys]
        with pytest.raises(gr.Error, match="inside the allowed folder"):
            next(respond("what is it?", [], 2, 0.0, *values))


def test_a_page_that_leaves_mid_answer_cancels_its_row(tiny_model):
    """Gradio closes the generator of a page that left: the job is cancelled, so its row
    stops at the next token instead of holding its batch slot to the end."""
    app = create_app(tiny_model, ui=False)
    seen = submitted(app.state.service)
    with TestClient(app, base_url=LOCAL):
        respond = ui_respond(app.state.service)
        with gr.Blocks():
            n = len(upload_slots(tiny_model))
        answer = respond("hello", [], 200, 0.0, *[None] * n)
        next(answer)  # the first streamed piece
        assert not seen[0].cancelled.is_set()
        answer.close()  # what Gradio does when the page goes
        assert seen[0].cancelled.is_set()
