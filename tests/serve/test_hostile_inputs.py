"""Requests a hostile but legitimate client sends to what the server reads of a request
(issue 36): each is a 4xx naming the field, never a 500; no file outside --allow-dir is
read, a frames folder's links and a pair's parts included; text past the context is
refused before it is tokenised; a stream whose client left stops generating; and the same
conversation gives the same greedy text through the server and `model.chat(messages=)`."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import LogitsProcessorList

from onellm.serve.app import create_app
from tests.conftest import Steps
from tests.serve.conftest import LOCAL, LiveServer, data_url


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, files):
    """An allowed folder: a frames folder, a depth pair, and links; a secret beside it."""
    root = tmp_path_factory.mktemp("hostile")
    d, secret = root / "allowed", root / "secret.png"
    (d / "frames").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(frame).save(d / "frames" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(secret)
    (d / "sneaky").mkdir()
    for i in range(2):
        (d / "sneaky" / f"{i}.png").write_bytes((d / "frames" / f"{i}.png").read_bytes())
    (d / "sneaky" / "2.png").symlink_to(secret)  # one frame links outside
    (d / "rgb.png").write_bytes((files / "rgb.png").read_bytes())
    (d / "depth.npy").symlink_to(files / "depth.npy")  # a pair's part links outside
    os.mkfifo(d / "pipe.png")  # a reader would wait on it for ever
    (d / "scan.nii").write_bytes(b"\0" * 352)  # a NIfTI's place; its mask links outside
    (d / "mask.nii").symlink_to(secret)
    (d / "loop.png").symlink_to(d / "loop.png")  # a link to itself
    return d


@pytest.fixture(scope="module")
def client(tiny_model, allowed):
    with TestClient(create_app(tiny_model, ui=False, allow_dir=allowed), base_url=LOCAL) as c:
        yield c


def post(client, messages, **kw):
    body = json.dumps({"messages": messages, **kw})  # ASCII JSON: a lone surrogate escaped
    return client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )


def user(*content):
    return [{"role": "user", "content": list(content)}]


def text(t):
    return {"type": "text", "text": t}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def onellm(modality, **f):
    return {"type": "onellm_input", "onellm_input": {"modality": modality, **f}}


def refused(r, status: int, *needles: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert all(n in message for n in needles), message


def test_the_same_conversation_through_the_server_and_the_library(client, tiny_model, files):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [image(data_url(files / "x.png")), text("What is it?")]},
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": "Where is it?"},
    ]
    r = post(client, messages, max_tokens=8)
    assert r.status_code == 200, r.text
    want = tiny_model.chat(messages=messages, max_new_tokens=8)
    assert r.json()["choices"][0]["message"]["content"] == want.text
    assert r.json()["usage"]["completion_tokens"] == len(want.token_ids)
    alone = tiny_model.chat(
        str(files / "x.png"),
        modality="image",
        prompt="Where is it?",
        history=[("What is it?", "a red circle")],
        system="Answer briefly.",
        max_new_tokens=8,
    )
    assert alone.token_ids == want.token_ids


def test_text_the_tokenizer_cannot_read_is_a_400(client):
    body = '{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}'  # JSON's escape
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    refused(r, 400, "messages[0].content: expected Unicode text, got a lone surrogate")
    history = [*user(text("a")), {"role": "assistant", "content": "b\udc00"}, *user(text("c"))]
    body = json.dumps({"messages": history})  # ASCII JSON: the surrogate as its escape
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    refused(r, 400, "messages[1].content: expected Unicode text")


def test_paths_that_break_the_file_system_calls_are_400s(client, allowed):
    long = str(allowed / ("a" * 5000))
    cases = {
        "a NUL byte": (str(allowed / "x\x00.png"), "expected a file path, got one with a NUL byte"),
        "a lone surrogate": (
            str(allowed / "x\ud800.png"),
            "got one with a lone surrogate '\\ud800'",
        ),
        "a name too long": (long, "(File name too long)"),
        "no such file": (str(allowed / "none.png"), "expected an existing file"),
        "a FIFO": (str(allowed / "pipe.png"), "expected a file or a folder"),
        "a link loop": (str(allowed / "loop.png"), "expected a file path, got"),
        "a folder as an image": (str(allowed / "frames"), "image: expected a readable"),
    }
    for name, (path, needle) in cases.items():
        refused(post(client, user(image(path), text("hi"))), 400, needle)
        assert "Traceback" not in needle, name


def test_no_file_outside_the_allowed_folder_is_read(client, allowed):
    # a frames folder with one frame linking outside: refused, naming the link
    sneaky = onellm("video", path=str(allowed / "sneaky"))
    refused(post(client, user(sneaky, text("hi"))), 403, "'2.png' linking outside")
    # a pair whose second part links outside
    pair = onellm(
        "depth",
        parts={
            "rgb": {"path": str(allowed / "rgb.png")},
            "depth": {"path": str(allowed / "depth.npy")},
        },
    )
    refused(post(client, user(pair, text("hi"))), 403, "parts.depth.path: expected a path inside")
    # a NIfTI whose mask links outside
    scan = {
        "scan": {"path": str(allowed / "scan.nii")},
        "mask": {"path": str(allowed / "mask.nii")},
    }
    refused(post(client, user(onellm("fmri", parts=scan), text("hi"))), 403, "parts.mask.path")
    # a missing file outside says 403, not whether it exists
    refused(
        post(client, user(image("/no/such/file.png"), text("hi"))), 403, "inside the allowed folder"
    )


def test_a_frames_folder_inside_is_read_as_chat_reads_it(client, tiny_model, allowed):
    r = post(client, user(onellm("video", path=str(allowed / "frames")), text("hi")), max_tokens=4)
    assert r.status_code == 200, r.text
    want = tiny_model.chat(str(allowed / "frames"), modality="video", prompt="hi", max_new_tokens=4)
    assert r.json()["choices"][0]["message"]["content"] == want.text


def test_library_parts_are_not_taken_over_http(client):
    r = post(client, user({"type": "image", "image": "/etc/passwd"}, text("hi")))
    refused(r, 400, "content[0].type: expected one of text, image_url", "got 'image'")
    assert "modality of this model" not in r.json()["error"]["message"]


def test_malformed_parts_name_their_field(client):
    cases = {
        "content a number": (
            [{"role": "user", "content": 5}],
            "expected a string or a list of content parts",
        ),
        "a part not an object": (user(5), "content[0]: expected a content part"),
        "a URL not a string": (user(image(7)), "image_url.url: expected a URL string, got int"),
        "audio not an object": (
            user({"type": "input_audio", "input_audio": "x"}),
            "input_audio: expected an object",
        ),
        "format not a suffix": (
            user(onellm("point", data="AAAA", format="../x")),
            "format: expected the file's suffix",
        ),
        "parts not an object": (
            user(onellm("depth", parts=[1])),
            "expected 'modality' and 'parts'",
        ),
    }
    for name, (messages, needle) in cases.items():
        r = post(client, messages)
        assert r.status_code == 400, (name, r.text)
        assert needle in r.json()["error"]["message"], (name, r.json())


def test_prompts_past_the_context_are_refused_before_tokenising(client, tiny_model, monkeypatch):
    context = tiny_model.llm.config.max_position_embeddings
    with monkeypatch.context() as m:
        m.setattr(tiny_model.layout, "row", lambda *a, **k: pytest.fail("tokenised"))
        for size in (2**20, 4 * 2**20):  # 1 MiB and 4 MiB of text
            r = post(client, user(text("a" * size)))
            refused(r, 400, f"context of {context} tokens", f"got {size:,} characters")
    words = " ".join(f"zq{i}" for i in range(context))  # under the bound in characters
    refused(post(client, user(text(words))), 400, "the prompt has", f"context holds {context}")
    r = post(client, user(text("hi")), max_tokens=context)
    refused(r, 400, "max_tokens: the prompt has")
    n, at_most = re.search(
        r"has (\d+) tokens.* at most (\d+), got", r.json()["error"]["message"]
    ).groups()
    assert int(n) + int(at_most) == context


def test_a_stream_whose_client_leaves_stops_generating(tiny_model):
    """Through uvicorn: the client reads two chunks of a 400-token stream and closes the
    connection; the row stops, so a 1-token request after it waits a few steps, not 400."""
    steps = Steps()
    app = create_app(
        tiny_model, ui=False, generate_kwargs={"logits_processor": LogitsProcessorList([steps])}
    )
    server = LiveServer(app)
    long = {"messages": user(text("Tell me a long story.")), "max_tokens": 400, "stream": True}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json=long) as r:
                lines = r.iter_lines()
                chunks = [next(lines) for _ in range(6)]
                left = steps.n  # the client leaves here
            short = c.post(
                "/v1/chat/completions", json={"messages": user(text("hi")), "max_tokens": 1}
            )
    finally:
        server.close()
    assert any('"content"' in line for line in chunks)
    assert short.status_code == 200, short.text
    assert left < 100 and steps.n - left < 30, (left, steps.n)  # not the 400 - left still to come


def test_sampling_settings_that_are_not_numbers_are_400s(client):
    for name in ("temperature", "top_p"):
        body = '{"messages": [{"role": "user", "content": "hi"}], "' + name + '": NaN}'
        r = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and name in r.json()["error"]["message"], r.text


class SlowSteps(Steps):
    """Counts decoding steps, each 10 ms longer, and never lets a row end on EOS."""

    def __init__(self, eos: int) -> None:
        super().__init__()
        self.eos = eos

    def __call__(self, input_ids, scores):
        time.sleep(0.01)
        scores[:, self.eos] = float("-inf")
        return super().__call__(input_ids, scores)


def test_a_whole_answer_whose_client_leaves_stops_generating(tiny_model):
    """Not streamed: the client sends a 400-token request and closes its socket; the
    server notices, cancels the row, and generation stops long before 400 steps."""
    steps = SlowSteps(tiny_model.text_tokenizer.eos_token_id)
    app = create_app(
        tiny_model, ui=False, generate_kwargs={"logits_processor": LogitsProcessorList([steps])}
    )
    server = LiveServer(app)
    body = json.dumps({"messages": user(text("Tell me a long story.")), "max_tokens": 400})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall((head + body).encode())
            deadline = time.monotonic() + 30
            while steps.n < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(1.5)  # the server polls for a gone client every 0.25 s
        stopped = steps.n
        time.sleep(0.5)
    finally:
        server.close()
    assert 5 <= stopped < 250 and steps.n - stopped <= 1, (stopped, steps.n)
