"""The memory cases of issue 36 sent again and again to a real server (the app under
FastAPI's TestClient, in this process) as base64 uploads through /v1/chat/completions:
every request of at most 1 MB adds under 64 MB at its peak, and the server's resident
memory comes back to where it started.

Memory is read after `gc.collect()` and glibc's `malloc_trim(0)` (hostile_media.trim):
glibc keeps freed heap mapped otherwise, and a reading would count memory nobody holds.
Start and end compare anonymous memory (RssAnon): library code pages the kernel evicts
and faults back in on a busy machine are not the requests' memory.
"""

from __future__ import annotations

import base64
import time

from fastapi.testclient import TestClient

from onellm.serve.app import create_app
from tests.serve.conftest import LOCAL
from tests.serve.hostile_media import MB, PeakRSS, anon, build_all

BUDGET = 64 * MB
ROUNDS = 2  # after the warm-up; each round sends every case once
SLACK = 16 * MB  # what the server may keep after ROUNDS x cases requests (allocator, caches)


def upload(path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"data": data, "format": path.suffix.lstrip(".")}


def body(raw, modality: str) -> dict:
    if isinstance(raw, dict):  # a pair (rgb and its map)
        part = {"modality": modality, "parts": {k: upload(p) for k, p in raw.items()}}
    else:
        part = {"modality": modality, **upload(raw)}
    content = [{"type": "onellm_input", "onellm_input": part}, {"type": "text", "text": "what?"}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2}


def test_memory_returns_to_its_start_under_repeated_hostile_uploads(tiny_model, tmp_path):
    files = build_all(tmp_path)
    bodies = {case: body(path, modality) for case, (path, modality) in files.items()}
    with TestClient(create_app(tiny_model, ui=False), base_url=LOCAL) as client:
        statuses = {
            case: client.post("/v1/chat/completions", json=b).status_code
            for case, b in bodies.items()
        }  # one round to warm every reader up
        start = anon()
        worst = {}
        for _ in range(ROUNDS):
            for case, b in bodies.items():
                assert len(str(b)) < MB
                t = time.perf_counter()
                with PeakRSS() as m:
                    r = client.post("/v1/chat/completions", json=b)
                worst[case] = max(worst.get(case, 0), m.added)
                assert r.status_code == statuses[case] in (200, 400), (case, r.text)
                assert time.perf_counter() - t < 60
        end = anon()
    print(
        f"RssAnon {start / MB:.1f} -> {end / MB:.1f} MB;",
        {c: f"{v / MB:.1f}" for c, v in worst.items()},
    )
    assert max(worst.values()) < BUDGET, {c: v / MB for c, v in worst.items()}
    assert end - start < SLACK, f"{(end - start) / MB:.1f} MB stayed after {ROUNDS} rounds"
