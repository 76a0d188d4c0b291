"""`model.chat(messages=[...])`: OpenAI's messages with the server's typed content parts
(and, in the library, parts carrying Python objects) give the same greedy answers as
`model.chat(inputs, prompt=..., history=..., system=...)` and as the server; bad messages
and bad text: tests/inference/test_message_errors.py."""

from __future__ import annotations

import numpy as np
from PIL import Image

from onellm.inference.chat import segments_of
from onellm.inference.media import Media
from onellm.inference.messages import conversations, one_turn, read_messages
from tests.conftest import b64  # and the `files` fixture: the uploads the serve tests use

N = dict(max_new_tokens=6)


def conversation(image_url: str) -> list[dict]:
    """A system message, an image with a question, an answer, a follow-up."""
    return [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": "What is it?"},
            ],
        },
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
    ]


def test_messages_equal_inputs_prompt_history_and_system(tiny_model, files):
    png = files / "x.png"
    want = tiny_model.chat(
        str(png),
        modality="image",
        prompt="Where is it?",
        history=[("What is it?", "a red circle")],
        system="Answer briefly.",
        **N,
    )
    for url in (f"data:image/png;base64,{b64(png)}", str(png), f"file://{png}"):
        got = tiny_model.chat(messages=conversation(url), **N)
        assert got.token_ids == want.token_ids and got.text == want.text, url
    # the system message is in the prompt, in place of the config's
    with Media() as media:
        d = read_messages(tiny_model, conversation(str(png)), media)
    assert d.system == "Answer briefly." and "Answer briefly." in segments_of(tiny_model, d)[0][0]
    assert d.history == [("What is it?", "a red circle")] and d.prompt == "Where is it?"


def test_python_objects_and_onellm_parts_equal_chat_on_the_same_input(tiny_model, files):
    pixels = np.array(Image.open(files / "x.png"))
    want = tiny_model.chat(pixels, modality="image", prompt="What is it?", **N)
    for part in (
        {"type": "image", "image": pixels},
        {"type": "image", "image": Image.open(files / "x.png")},
        {"type": "image", "image": str(files / "x.png")},
        {
            "type": "onellm_input",
            "onellm_input": {"modality": "image", "data": b64(files / "x.png"), "format": "png"},
        },
    ):
        msgs = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]
        assert tiny_model.chat(messages=msgs, **N).token_ids == want.token_ids, part["type"]
    raws = {
        "audio": str(files / "x.wav"),
        "point": str(files / "cloud.npy"),
        "depth": {"rgb": str(files / "rgb.png"), "depth": str(files / "depth.npy")},
    }
    want = tiny_model.chat(raws, prompt="Does <audio> match?", **N)
    content = [
        {"type": "input_audio", "input_audio": {"data": b64(files / "x.wav"), "format": "wav"}},
        {"type": "onellm_input", "onellm_input": {"modality": "point", "path": raws["point"]}},
        {
            "type": "onellm_input",
            "onellm_input": {
                "modality": "depth",
                "parts": {
                    "rgb": {"path": raws["depth"]["rgb"]},
                    "depth": {"path": raws["depth"]["depth"]},
                },
            },
        },
        {"type": "text", "text": "Does <audio> match?"},
    ]
    got = tiny_model.chat(messages=[{"role": "user", "content": content}], **N)
    assert got.token_ids == want.token_ids and got.text == want.text


def test_a_list_of_conversations_is_a_batch_equal_to_each_alone(tiny_model, files):
    convs = [
        conversation(str(files / "x.png")),
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": [{"type": "image", "image": str(files / "rgb.png")}]}],
    ]
    assert conversations(convs) == (convs, True)
    assert conversations(convs[1]) == ([convs[1]], False)
    batch = tiny_model.chat(messages=convs, **N)
    assert isinstance(batch, list) and len(batch) == 3
    for conv, got in zip(convs, batch, strict=True):
        assert got.token_ids == tiny_model.chat(messages=conv, **N).token_ids
    caption = tiny_model.chat(str(files / "rgb.png"), modality="image", **N)  # no text: a caption
    assert batch[2].token_ids == caption.token_ids


def test_the_message_stream_joins_to_the_whole_reply(tiny_model, files):
    msgs = conversation(str(files / "x.png"))
    pieces = list(tiny_model.chat(messages=msgs, stream=True, max_new_tokens=12))
    assert "".join(pieces) == tiny_model.chat(messages=msgs, max_new_tokens=12).text


def test_one_turn_conversations_equal_a_batch_of_inputs(tiny_model):  # the evaluation's asks
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    pairs = [(rng.random((32, 32, 3)).astype(np.float32), rng.random((32, 32))) for _ in range(2)]
    for key, xs, q in (
        ("image", images, None),
        ("image", images, "What colour?"),
        ("depth", pairs, "Near?"),
    ):
        want = tiny_model.chat(xs, modality=key, prompt=q, **N)
        got = tiny_model.chat(messages=[one_turn({key: x}, q) for x in xs], **N)
        assert [r.token_ids for r in got] == [r.token_ids for r in want], (key, q)
