"""Bad messages and bad text for `model.chat`: each an `InputError` naming the field
(`messages[0].content[1].image_url.url: ...`), raised before any tokenising, the model
unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from onellm.errors import InputError

N = dict(max_new_tokens=6)


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


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
    "a data: URL not in base64": (
        dict(messages=user(image("data:image/png,%89PNG"))),
        r"image_url\.url: expected a base64 data: URL \(data:<media type>;base64,<data>\), got 'data:image/png,%89PNG'",
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
    "surrogate in a path": (
        dict(messages=user({"type": "image", "image": "/tmp/\ud800.png"})),
        r"\.image: expected a file path, got one with a lone surrogate",
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
    "a batch's conversation": (
        dict(messages=[user(text("a")), [{"role": "bot", "content": "b"}]]),
        r"^messages\[1\]\[0\]\.role: expected one of",
    ),
    "nothing to answer": (
        dict(messages=user(text("  "))),
        r"^messages: expected text or an input in the last user message, got none",
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
