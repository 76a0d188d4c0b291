"""The request queue: concurrent requests share generate calls, grouped by sampling
settings, and each greedy answer equals what its request gets alone."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
from transformers import LogitsProcessorList

from onellm.serve.batcher import Batcher, Busy, Job
from onellm.serve.inputs import prepare
from tests.conftest import Steps
from tests.modalities.test_contract import RAW


def img(seed):
    return np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)


ASKS = [  # (inputs, prompt, history, max_tokens): different prompts, modalities, lengths
    ({"image": img(0)}, "What is this?", [], 10),
    ({}, "hello, what do you see over there?", [("hi", "a red circle")], 3),
    ({"image": img(1), "audio": RAW["audio"]()}, "Does <audio> match?", [], 7),
    ({"point": RAW["point"]()}, "What shape?", [], 12),
    ({"imu": RAW["imu"]()}, None, [], 5),  # captioning
]


def run(batcher: Batcher, jobs: list[Job]) -> list:
    """Submit `jobs` and wait for each one's reply (or error)."""
    done: list[queue.Queue] = []
    for job in jobs:
        q: queue.Queue = queue.Queue()
        job.emit = lambda kind, value, q=q: q.put((kind, value)) if kind != "text" else None
        done.append(q)
        batcher.submit(job)
    out = []
    for q in done:
        kind, value = q.get(timeout=120)
        assert kind == "done", value
        out.append(value)
    return out


def job(model, raws, prompt, history, n, **kw):
    return Job(prepare(model, raws, prompt, history).conversation, n, emit=None, **kw)


def test_concurrent_requests_share_one_generate_and_each_equals_its_answer_alone(tiny_model):
    batcher = Batcher(tiny_model, max_batch=8, max_wait_s=2.0).start()
    try:
        replies = run(batcher, [job(tiny_model, *a) for a in ASKS])
    finally:
        batcher.stop()
    assert dict(batcher.sizes) == {len(ASKS): 1}  # one generate call for all five
    for (raws, prompt, history, n), got in zip(ASKS, replies, strict=True):
        alone = tiny_model.chat(raws or None, prompt=prompt, history=history, max_new_tokens=n)
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert len(got.token_ids) <= n


def test_a_batch_closes_when_full_and_groups_by_sampling_settings(tiny_model):
    batcher = Batcher(tiny_model, max_batch=3, max_wait_s=2.0).start()
    try:
        jobs = [job(tiny_model, {}, f"question {i}", [], 4) for i in range(3)]  # fills a batch
        jobs += [
            job(tiny_model, {}, f"sampled {i}", [], 4, temperature=0.8, top_p=0.9) for i in range(2)
        ]
        jobs += [job(tiny_model, {}, "greedy again", [], 4)]
        run(batcher, jobs)
    finally:
        batcher.stop()
    # [3 greedy] then [2 sampled + 1 greedy] -> one call of 3, then calls of 2 and 1
    assert dict(batcher.sizes) == {3: 1, 2: 1, 1: 1}


def test_a_streamed_request_in_a_batch_hears_its_own_text(tiny_model):
    batcher = Batcher(tiny_model, max_batch=4, max_wait_s=2.0).start()
    pieces: list[str] = []
    lock = threading.Lock()
    try:
        streamed = job(tiny_model, {"image": img(3)}, "Describe it.", [], 12, stream=True)
        other = job(tiny_model, {}, "And you?", [], 12)
        jobs = [streamed, other]
        results: list[queue.Queue] = [queue.Queue(), queue.Queue()]

        def hear(kind, value):
            if kind == "text":
                with lock:
                    pieces.append(value)
            else:
                results[0].put((kind, value))

        streamed.emit = hear
        other.emit = lambda kind, value: results[1].put((kind, value)) if kind != "text" else None
        for j in jobs:
            batcher.submit(j)
        (_, a), (_, b) = results[0].get(timeout=60), results[1].get(timeout=60)
    finally:
        batcher.stop()
    assert dict(batcher.sizes) == {2: 1}
    assert "".join(pieces) == a.text and len(pieces) >= 2
    assert b.text == tiny_model.chat(prompt="And you?", max_new_tokens=12).text


def test_a_full_queue_refuses_instead_of_growing(tiny_model):
    batcher = Batcher(tiny_model, max_queue=2)  # not started: nothing drains it
    for i in range(2):
        batcher.submit(job(tiny_model, {}, f"q{i}", [], 2))
    with pytest.raises(Busy, match="2 requests waiting"):
        batcher.submit(job(tiny_model, {}, "one too many", [], 2))


def test_a_stream_whose_client_left_stops_and_the_next_job_runs(tiny_model):
    """The API sets `job.cancelled` when a stream's connection closes: the row stops at its
    next token, so a 1-token job queued behind a 400-token stream waits a few steps, not 400."""
    steps = Steps()
    kw = {"logits_processor": LogitsProcessorList([steps])}
    batcher = Batcher(tiny_model, max_batch=8, max_wait_s=0.0, generate_kwargs=kw).start()
    long = job(tiny_model, {}, "Tell me a long story.", [], 400, stream=True)
    started, ended, answered = threading.Event(), queue.Queue(), queue.Queue()
    long.emit = lambda kind, value: started.set() if kind == "text" else ended.put(value)
    short = job(tiny_model, {}, "hi", [], 1)
    short.emit = lambda kind, value: answered.put((kind, value))
    try:
        batcher.submit(long)
        assert started.wait(60)  # it is streaming
        batcher.submit(short)  # queued behind it
        cut = steps.n
        long.cancelled.set()  # the client left
        kind, reply = answered.get(timeout=60)
    finally:
        batcher.stop()
    assert kind == "done" and len(reply.token_ids) == 1
    assert cut < 100  # the stream was cancelled early in its 400 tokens
    # then at most the stream's token in flight (+1 for the race with the read of `cut`)
    # and the short job's one token
    assert steps.n - cut <= 3
    assert len(ended.get(timeout=5).token_ids) <= cut + 2
