"""Bounded traffic against a live server on 127.0.0.1: 8 clients at once (24 requests in
all, each with a time limit) share batches and each gets its greedy answer; the `openai`
Python client talks to it as to OpenAI. The 500-request soak is slow-marked."""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from onellm.serve.app import create_app
from tests.serve.conftest import LiveServer, data_url

CLIENTS, EACH = 8, 3


@pytest.fixture(scope="module")
def server(tiny_model):
    live = LiveServer(create_app(tiny_model, model_id="tiny", ui=False, batch_wait_ms=50))
    yield live
    live.close()


def payload(i: int, image: str | None) -> dict:
    content = [{"type": "text", "text": f"What is shape number {i % 4}?"}]
    if image is not None and i % 2:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6 + i % 5}


def test_eight_clients_at_once_share_batches_and_get_their_own_answers(server, tiny_model, files):
    image = data_url(files / "x.png")
    asks = [payload(i, image) for i in range(CLIENTS * EACH)]

    def client(k: int) -> list[dict]:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return [
                c.post("/v1/chat/completions", json=asks[k * EACH + j]).json() for j in range(EACH)
            ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        bodies = [b for got in pool.map(client, range(CLIENTS)) for b in got]
    sizes = {int(k): v for k, v in httpx.get(server.url + "/health").json()["batches"].items()}
    assert max(sizes) > 1  # requests shared generate calls
    for i, body in enumerate(bodies):
        raw = str(files / "x.png") if i % 2 else None
        want = tiny_model.chat(
            raw,
            modality="image" if raw else None,
            prompt=f"What is shape number {i % 4}?",
            max_new_tokens=6 + i % 5,
        )
        assert body["choices"][0]["message"]["content"] == want.text, i


def test_the_openai_client_works_against_it(server, tiny_model, files):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny"]
    png = base64.b64encode((files / "x.png").read_bytes()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            ],
        }
    ]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    want = tiny_model.chat(
        str(files / "x.png"), modality="image", prompt="What is this?", max_new_tokens=8
    )
    assert reply.choices[0].message.content == want.text
    assert reply.usage.completion_tokens == len(want.token_ids)
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.text
    with pytest.raises(openai.BadRequestError, match="<seg> is the token the model emits"):
        client.chat.completions.create(
            model="tiny", max_tokens=2, messages=[{"role": "user", "content": "<seg>"}]
        )


def rss_mb() -> float:
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_memory_stays_bounded_over_a_500_request_soak(server, files):
    """500 requests (a third bad, a third with an image, some streamed) from 4 clients:
    the server's process (this one) grows by less than 50 MB after a warm-up."""
    image = data_url(files / "x.png")

    def one(i: int, c: httpx.Client) -> int:
        if i % 3 == 0:  # bad: a typed <seg> or an unreadable upload
            bad = (
                "<seg>"
                if i % 2
                else [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
            )
            return c.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": bad}]}
            ).status_code
        body = payload(i, image) | {"stream": i % 5 == 0}
        return c.post("/v1/chat/completions", json=body).status_code

    def run(start: int, n: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return [one(i, c) for i in range(start, start + n)]

    run(0, 40)  # warm-up: allocator pools, first-call caches
    before = rss_mb()
    with ThreadPoolExecutor(4) as pool:
        codes = [s for got in pool.map(lambda k: run(1000 + k * 125, 125), range(4)) for s in got]
    grown = rss_mb() - before
    assert len(codes) == 500 and set(codes) == {200, 400}
    print(f"soak: RSS {before:.0f} MB -> {before + grown:.0f} MB over 500 requests")
    assert grown < 50, grown
