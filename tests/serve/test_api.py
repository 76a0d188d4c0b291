"""The OpenAI-compatible API over the tiny model, through FastAPI's TestClient: each answer
equals `model.chat` on the same files, streaming joins to the same text, masks come back as
PNGs at their <seg>, and every bad request is a 4xx that leaves the server answering."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import LogitsProcessorList

from onellm.serve.app import create_app
from tests.conftest import ForceAt
from tests.serve.conftest import LOCAL, b64, data_url


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(tiny_model, model_id="tiny", ui=False), base_url=LOCAL) as c:
        yield c


def ask(client, content, **kw):
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **kw}
    )
    assert r.status_code == 200, r.text
    return r.json()


def text_of(body) -> str:
    return body["choices"][0]["message"]["content"]


def test_text_answer_and_usage_equal_model_chat(client, tiny_model):
    body = ask(client, "What colour is it?", max_tokens=8, model="tiny")
    want = tiny_model.chat(prompt="What colour is it?", max_new_tokens=8)
    assert text_of(body) == want.text
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["usage"]["completion_tokens"] == len(want.token_ids)
    assert body["choices"][0]["finish_reason"] == ("length" if len(want.token_ids) == 8 else "stop")


def test_image_data_url_equals_chat_on_the_file(client, tiny_model, files):
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url(files / "x.png")}},
    ]
    body = ask(client, content, max_tokens=8)
    want = tiny_model.chat(
        str(files / "x.png"), modality="image", prompt="What is this?", max_new_tokens=8
    )
    assert text_of(body) == want.text
    # the image matters: without it the answer's prompt differs
    assert (
        body["usage"]["prompt_tokens"]
        > ask(client, "What is this?", max_tokens=1)["usage"]["prompt_tokens"]
    )


def test_two_and_three_modalities_in_one_message(client, tiny_model, files):
    content = [
        {"type": "image_url", "image_url": {"url": data_url(files / "x.png")}},
        {"type": "input_audio", "input_audio": {"data": b64(files / "x.wav"), "format": "wav"}},
        {"type": "text", "text": "Does <audio> match the picture?"},
    ]
    raws = {"image": str(files / "x.png"), "audio": str(files / "x.wav")}
    want = tiny_model.chat(raws, prompt="Does <audio> match the picture?", max_new_tokens=8)
    assert text_of(ask(client, content, max_tokens=8)) == want.text
    point = {
        "type": "onellm_input",
        "onellm_input": {"modality": "point", "format": "npy", "data": b64(files / "cloud.npy")},
    }
    depth = {
        "type": "onellm_input",
        "onellm_input": {
            "modality": "depth",
            "parts": {
                "rgb": {"data": b64(files / "rgb.png"), "format": "png"},
                "depth": {"data": b64(files / "depth.npy"), "format": "npy"},
            },
        },
    }
    raws = {
        "point": str(files / "cloud.npy"),
        "depth": {"rgb": str(files / "rgb.png"), "depth": str(files / "depth.npy")},
    }
    want = tiny_model.chat(raws, prompt="Describe both.", max_new_tokens=8)
    got = ask(client, [point, depth, {"type": "text", "text": "Describe both."}], max_tokens=8)
    assert text_of(got) == want.text


UPLOADS = {  # modality -> the file (or pair of files) a user uploads
    "image": "x.png",
    "video": "clip.mp4",
    "audio": "x.wav",
    "point": "cloud.npy",
    "imu": "imu.npy",
    "fmri": "fmri.npy",
    "depth": {"rgb": "rgb.png", "depth": "depth.npy"},
    "normal": {"rgb": "rgb.png", "normal": "normal.npy"},
}


def upload(files, name):
    return {"data": b64(files / name), "format": name.rsplit(".", 1)[1]}


@pytest.mark.parametrize("modality", sorted(UPLOADS))
def test_every_modality_as_an_onellm_input_equals_chat_on_its_file(
    client, tiny_model, files, modality
):
    spec = UPLOADS[modality]
    if isinstance(spec, dict):
        x = {"modality": modality, "parts": {k: upload(files, v) for k, v in spec.items()}}
        raw = {k: str(files / v) for k, v in spec.items()}
    else:
        x = {"modality": modality, **upload(files, spec)}
        raw = str(files / spec)
    body = ask(
        client,
        [{"type": "onellm_input", "onellm_input": x}, {"type": "text", "text": "What is it?"}],
        max_tokens=5,
    )
    want = tiny_model.chat(raw, modality=modality, prompt="What is it?", max_new_tokens=5)
    assert text_of(body) == want.text and body["usage"]["completion_tokens"] == len(want.token_ids)


def test_video_url_is_a_video(client, tiny_model, files):
    url = data_url(files / "clip.mp4", "video/mp4")
    body = ask(
        client,
        [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What moves?"}],
        max_tokens=5,
    )
    want = tiny_model.chat(
        str(files / "clip.mp4"), modality="video", prompt="What moves?", max_new_tokens=5
    )
    assert text_of(body) == want.text


def test_history_and_system_message(client, tiny_model):
    messages = [
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": "Where?"},
    ]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8})
    want = tiny_model.chat(
        prompt="Where?", history=[("What is it?", "a red circle")], max_new_tokens=8
    )
    assert text_of(r.json()) == want.text
    with_system = [{"role": "system", "content": "Answer briefly."}, *messages]
    r2 = client.post("/v1/chat/completions", json={"messages": with_system, "max_tokens": 8})
    assert r2.json()["usage"]["prompt_tokens"] > r.json()["usage"]["prompt_tokens"]


def sse(client, payload) -> list:
    with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_streaming_is_openai_chunks_that_join_to_the_answer(client, files):
    content = [
        {"type": "image_url", "image_url": {"url": data_url(files / "x.png")}},
        {"type": "text", "text": "Describe it."},
    ]
    whole = ask(client, content, max_tokens=12)
    chunks = sse(
        client,
        {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 12,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(pieces) == text_of(whole) and len([p for p in pieces if p]) >= 2
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"] and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


@pytest.fixture(scope="module")
def seg_client(tiny_model):
    """The server with every reply's second token forced to <seg>."""
    force = LogitsProcessorList([ForceAt(tiny_model.outputs.token_ids["seg"], 1)])
    app = create_app(tiny_model, ui=False, generate_kwargs={"logits_processor": force})
    with TestClient(app, base_url=LOCAL) as c:
        yield c, force


def test_masks_come_back_as_pngs_at_their_seg(seg_client, tiny_model, files):
    client, force = seg_client
    content = [
        {"type": "image_url", "image_url": {"url": data_url(files / "x.png")}},
        {"type": "text", "text": "segment the circle"},
    ]
    body = ask(client, content, max_tokens=6)
    want = tiny_model.chat(
        str(files / "x.png"),
        modality="image",
        prompt="segment the circle",
        max_new_tokens=6,
        logits_processor=force,
    )
    (mask,) = body["choices"][0]["message"]["masks"]
    assert mask["token"] == "<seg>" and mask["position"] == 1
    assert (mask["width"], mask["height"]) == (48, 40)  # the input's resolution
    png = np.array(Image.open(io.BytesIO(base64.b64decode(mask["png"])))) > 127
    assert np.array_equal(png, want.masks[0].numpy())
    assert 0 <= mask["offset"] <= len(text_of(body))
    chunks = sse(
        client,
        {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "stream": True},
    )
    assert chunks[-1]["choices"][0]["delta"]["masks"] == [mask]  # the last chunk carries them


def test_a_run_of_gen_tokens_comes_back_as_one_image(tiny_model):
    gen, n = tiny_model.outputs.token_ids["gen"], tiny_model.outputs["gen"].tokens
    force = LogitsProcessorList([ForceAt(gen, i) for i in range(1, 1 + n)])
    app = create_app(tiny_model, ui=False, generate_kwargs={"logits_processor": force})
    with TestClient(app, base_url=LOCAL) as c:
        body = ask(c, "draw a green square", max_tokens=n + 2)
    (image,) = body["choices"][0]["message"]["images"]
    assert image["token"] == "<gen>" and image["position"] == 1
    decoded = Image.open(io.BytesIO(base64.b64decode(image["png"])))
    assert decoded.size == (image["width"], image["height"]) == (32, 32)  # the tiny UNet's


def test_models_and_health(client, tiny_model):
    (card,) = client.get("/v1/models").json()["data"]
    assert card["id"] == "tiny" and card["modalities"] == sorted(tiny_model.modalities)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["quantization"] is None
    assert sum(health["batches"].values()) >= 1


def part(url):
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]


def bad_cases(files):
    msg = lambda content: {"messages": [{"role": "user", "content": content}]}  # noqa: E731
    png = data_url(files / "x.png")
    return {
        "unknown modality": (
            msg(
                [
                    {
                        "type": "onellm_input",
                        "onellm_input": {"modality": "smell", "data": "AAAA", "format": "bin"},
                    }
                ]
            ),
            400,
            "unknown modality 'smell'",
        ),
        "unknown part type": (
            msg([{"type": "smell", "text": "x"}]),
            400,
            "content[0].type: expected one of",
        ),
        "unreadable upload": (
            msg(part("data:image/png;base64," + base64.b64encode(b"not a png").decode())),
            400,
            "image: ",
        ),
        "invalid base64": (msg(part("data:image/png;base64,@@@")), 400, "expected base64 data"),
        "malformed JSON": (b'{"messages": [', 400, "malformed JSON"),
        "typed <seg>": (msg("segment <seg> the circle"), 400, "<seg> is the token the model emits"),
        "server path": (msg(part("/etc/passwd")), 403, "this server reads no files"),
        "file URL": (msg(part("file:///etc/passwd")), 403, "this server reads no files"),
        "http URL": (msg(part("http://example.com/x.png")), 400, "fetches nothing"),
        "two images": (msg([*part(png), *part(png)[:1]]), 400, "one image input in a conversation"),
        "placeholder without input": (msg("look at <image>"), 400, "<image> placeholder"),
        "last turn not the user's": (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            400,
            "ending with a user message",
        ),
        "no messages": ({"messages": []}, 400, "messages"),
        "n > 1": ({**msg("hi"), "n": 2}, 400, "n: "),
        "temperature out of range": ({**msg("hi"), "temperature": 5}, 400, "temperature: "),
        "max_tokens past the context": ({**msg("hi"), "max_tokens": 100_000}, 400, "max_tokens: "),
        "another model": ({**msg("hi"), "model": "gpt-4"}, 404, "expected 'tiny'"),
    }


def test_every_bad_request_is_a_4xx_with_the_error_and_the_server_keeps_answering(client, files):
    before = dict(client.app.state.service.batcher.sizes)
    for name, (payload, status, text) in bad_cases(files).items():
        if isinstance(payload, bytes):
            r = client.post(
                "/v1/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
        else:
            r = client.post("/v1/chat/completions", json=payload)
        assert r.status_code == status, (name, r.text)
        assert text in r.json()["error"]["message"], (name, r.json())
    assert dict(client.app.state.service.batcher.sizes) == before  # none reached the queue
    assert ask(client, "still there?", max_tokens=2)["choices"][0]["message"]["role"] == "assistant"


def test_oversized_body_is_413_before_it_is_read(tiny_model, files):
    app = create_app(tiny_model, ui=False, max_body_mb=0.001)  # 1 KiB
    with TestClient(app, base_url=LOCAL) as c:
        big = {"messages": [{"role": "user", "content": part(data_url(files / "x.png"))}]}
        r = c.post("/v1/chat/completions", json=big)
        assert (
            r.status_code == 413 and "expected at most 1,048 bytes" in r.json()["error"]["message"]
        )
        assert (
            c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            ).status_code
            == 200
        )


def test_paths_inside_the_allowed_folder_only(tiny_model, files, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((files / "x.png").read_bytes())
    (files / "link.png").unlink(missing_ok=True)
    (files / "link.png").symlink_to(outside)  # a link inside that points out
    app = create_app(tiny_model, ui=False, allow_dir=files)
    with TestClient(app, base_url=LOCAL) as c:

        def post(url):
            return c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": part(url)}], "max_tokens": 4},
            )

        ok = post(str(files / "x.png"))
        assert ok.status_code == 200
        want = tiny_model.chat(
            str(files / "x.png"), modality="image", prompt="hi", max_new_tokens=4
        )
        assert text_of(ok.json()) == want.text
        for url in (
            str(outside),
            f"{files}/../{outside.parent.name}/secret.png",
            str(files / "link.png"),
            f"file://{outside}",
        ):
            r = post(url)
            assert (
                r.status_code == 403 and "inside the allowed folder" in r.json()["error"]["message"]
            ), url


def test_importing_onellm_loads_no_server_libraries():
    import subprocess
    import sys

    code = (
        "import sys, onellm, onellm.inference.chat, onellm.cli.main; "
        "print(sorted(m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
