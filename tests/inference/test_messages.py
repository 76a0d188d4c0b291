"""`model.chat(messages=[...])`: OpenAI's messages with the server's typed content parts
(and, in the library, parts carrying Python objects) give the same greedy answers as
`model.chat(inputs, prompt=..., history=..., system=...)` and as the server; bad messages
and bad text are `InputError`s naming the field, raised before any tokenising."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from onellm.errors import InputError
from onellm.inference.chat import segments_of
from onellm.inference.media import Media
from onellm.inference.messages import conversations, one_turn, read_messages

N = dict(max_new_tokens=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("message-files")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "x.png")
    sf.write(d / "x.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    np.save(d / "cloud.npy", rng.standard_normal((300, 6)).astype(np.float32))
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "rgb.png")
    np.save(d / "depth.npy", (rng.random((32, 32)) * 5).astype(np.float32))
    return d


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


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


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


BAD = {  # messages (or chat keyword arguments) -> the error's start
    "messages and a prompt": (
        dict(messages=user(text("hi")), prompt="hi"),
        r"^messages: expected messages alone, got prompt",
    ),
    "not a list": (dict(messages="hi"), r"^messages: expected a list"),
    "empty": (dict(messages=[]), r"^messages: expected at least one message"),
    "a message not an object": (dict(messages=["hi"]), r"^messages\[0\]: expected an object"),
    "unknown role": (
        dict(messages=[{"role": "bot", "content": "x"}]),
        r"^messages\[0\]\.role: expected one of system, developer, user, assistant, got 'bot'",
    ),
    "content a number": (
        dict(messages=[{"role": "user", "content": 5}]),
        r"^messages\[0\]\.content: expected a string or a list of content parts",
    ),
    "a part not an object": (
        dict(messages=user(5)),
        r"^messages\[0\]\.content\[0\]: expected a content part",
    ),
    "unknown part type": (
        dict(messages=user({"type": "smell"})),
        r"^messages\[0\]\.content\[0\]\.type: expected one of text, .*, or a modality of this model",
    ),
    "text not a string": (
        dict(messages=user({"type": "text", "text": 3})),
        r"^messages\[0\]\.content\[0\]\.text: expected a string, got int",
    ),
    "lone surrogate": (
        dict(messages=user(text("a\ud800b"))),
        r"^messages\[0\]\.content: expected Unicode text, got a lone surrogate '\\ud800' at character 1",
    ),
    "media from the assistant": (
        dict(
            messages=[
                *user(text("a")),
                {"role": "assistant", "content": [{"type": "image", "image": "x.png"}]},
                *user(text("b")),
            ]
        ),
        r"^messages\[1\]\.content\[0\]: expected media in user messages only",
    ),
    "turns out of order": (
        dict(messages=[{"role": "assistant", "content": "a"}]),
        r"^messages: expected user and assistant turns in turn",
    ),
    "system not first": (
        dict(messages=[*user(text("a")), {"role": "system", "content": "s"}]),
        r"^messages\[1\]: expected the system message first",
    ),
    "two images": (
        dict(
            messages=user(
                {"type": "image", "image": np.zeros((8, 8, 3), np.uint8)},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            )
        ),
        r"one image input in a conversation, got two",
    ),
    "http URL": (
        dict(
            messages=user({"type": "image_url", "image_url": {"url": "https://example.com/x.png"}})
        ),
        r"image_url\.url: expected a data: URL or a file, got an http URL \(onellm fetches nothing",
    ),
    "bad base64": (
        dict(
            messages=user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}})
        ),
        r"image_url\.url: expected base64 data",
    ),
    "unknown media type": (
        dict(
            messages=user({"type": "image_url", "image_url": {"url": "data:text/html;base64,AAAA"}})
        ),
        r"expected a data: URL with a media type onellm reads",
    ),
    "NUL in a path": (
        dict(messages=user({"type": "image", "image": "/tmp/a\x00b.png"})),
        r"^messages\[0\]\.content\[0\]\.image: expected a file path, got one with a NUL byte",
    ),
    "a path too long": (
        dict(messages=user({"type": "image_url", "image_url": {"url": "/tmp/" + "a" * 5000}})),
        r"image_url\.url: expected a readable file, got '/tmp/aaa.*\(5,005 chars\) \(File name too long\)",
    ),
    "no such file": (
        dict(messages=user({"type": "image", "image": "/no/such.png"})),
        r"\.image: expected an existing file, got '/no/such.png'",
    ),
    "unknown modality": (
        dict(
            messages=user(
                {
                    "type": "onellm_input",
                    "onellm_input": {"modality": "smell", "data": "AAAA", "format": "bin"},
                }
            )
        ),
        r"onellm_input\.modality: unknown modality 'smell'",
    ),
    "a typo in a file": (
        dict(
            messages=user(
                {
                    "type": "onellm_input",
                    "onellm_input": {"modality": "point", "data": "AAAA", "fromat": "npy"},
                }
            )
        ),
        r"onellm_input: expected only the keys data, format, modality, path, got \['fromat'\]",
    ),
    "data and path": (
        dict(
            messages=user(
                {
                    "type": "onellm_input",
                    "onellm_input": {"modality": "point", "data": "AAAA", "path": "x.npy"},
                }
            )
        ),
        r"expected one of 'data' \(base64\) or 'path', got both",
    ),
    "surrogate in a prompt": (
        dict(prompt="hi \udfff"),
        r"^prompt: expected Unicode text, got a lone surrogate",
    ),
    "surrogate in history": (
        dict(prompt="hi", history=[("a", "b\ud800")]),
        r"^history\[0\]\[1\]: expected Unicode text",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_name_the_field(unchanged, case):
    kwargs, message = BAD[case]
    with pytest.raises(InputError, match=message):
        unchanged.chat(max_new_tokens=2, **kwargs)


def test_a_folder_is_not_an_image(tiny_model, tmp_path):
    with pytest.raises(InputError, match=r"^image: expected a readable file"):
        tiny_model.chat(messages=user({"type": "image", "image": str(tmp_path)}), **N)


def test_text_past_the_context_is_refused_before_it_is_tokenised(tiny_model, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the text was tokenised")

    context = tiny_model.llm.config.max_position_embeddings
    longest = max(len(t) for t in tiny_model.text_tokenizer.get_vocab())
    big = "a" * (context * longest + 1)  # one character past what could fit
    with monkeypatch.context() as m:
        m.setattr(tiny_model.layout, "row", never)
        for kwargs in (dict(prompt=big), dict(messages=user(text(big)))):
            with pytest.raises(
                InputError, match=rf"context of {context} tokens .* got {len(big):,} characters"
            ):
                tiny_model.chat(**kwargs)
        split = dict(prompt=big[:100], history=[(big[100:], "ok")])  # counted together
        with pytest.raises(InputError, match="characters"):
            tiny_model.chat(**split)
    # under the character bound but over the context in tokens: refused once tokenised, saying so
    words = " ".join(f"zq{i}" for i in range(context))
    with pytest.raises(InputError, match=rf"the prompt has \d+ tokens .* context holds {context}"):
        tiny_model.chat(prompt=words, max_new_tokens=1)


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
