"""A hostile but well-formed client against the whole app (the API and the mounted UI): no
file but an upload is read and no URL fetched, bodies and JSON are bounded, only JSON is
taken, Host, Origin and the key are checked, an unexpected error is a JSON 500 without its
traceback, and a silent connection is closed."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from onellm.errors import OneLLMError
from onellm.serve import connections
from onellm.serve.app import create_app
from onellm.serve.exposure import check_exposure
from tests.conftest import TINY
from tests.serve.conftest import LOCAL, LiveServer, data_url, write_video

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    app = create_app(tiny_model, model_id="tiny", allow_dir=tmp_path_factory.mktemp("allowed"))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup beyond loopback fails the test (and is recorded)."""
    tried = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            tried.append(address)
            raise OSError("test: no network")
        return connect(self, address)

    def guarded_lookup(host, *args, **kw):
        if host not in ("127.0.0.1", "::1", "localhost"):
            tried.append(host)
            raise OSError("test: no DNS")
        return lookup(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    return tried


def respond_body(client, image=None, file=None) -> dict:
    """The UI's `respond` event as its page sends it, with the image slot (and the first
    file slot) set."""
    cfg = client.get("/config").json()
    comps = {c["id"]: c for c in cfg["components"]}
    dep = next(d for d in cfg["dependencies"] if d.get("api_name") == "respond")
    data, filled = [], False
    for cid in dep["inputs"]:
        kind, elem = comps[cid]["type"], comps[cid]["props"].get("elem_id")
        value = {"textbox": "what is it?", "slider": 2}.get(kind)
        if elem == "input-image":
            value = image
        elif kind == "file" and not filled:
            value, filled = file, True
        data.append(value)
    return {"data": data}


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_the_ui_reads_no_server_file_and_fetches_no_url(client, tmp_path, no_network, files):
    secret = tmp_path / f"secret-{uuid.uuid4().hex}.txt"
    secret.write_text("the server's secret")
    names = ["/etc/passwd", str(secret), f"{gr.utils.get_upload_folder()}/../../etc/passwd"]
    names += ["https://example.com/x.png", "http://169.254.169.254/latest", "file:///etc/passwd"]
    for name in names:
        for slot in ("image", "file"):
            r = client.post(
                "/gradio_api/call/respond", json=respond_body(client, **{slot: file_data(name)})
            )
            assert r.status_code == 403, (name, slot, r.text)
            assert "expected a file uploaded through this UI" in r.json()["error"]["message"]
    for route in ("/gradio_api/file=/etc/passwd", f"/gradio_api/file={secret}"):
        assert client.get(route).status_code == 403
    assert client.get("/gradio_api/file=https://example.com/a.png").status_code == 403
    assert client.get("/gradio_api/proxy=https://example.com/").status_code == 404
    # a chat message naming a component for the server to build
    built = {"type": "component", "component": "image", "value": None, "constructor_args": {}}
    r = client.post(
        "/gradio_api/call/respond", json={"data": ["hi", [{"role": "user", "content": [built]}]]}
    )
    assert r.status_code == 403
    assert no_network == []  # refused before any connection or lookup
    assert not any(f.name == secret.name for f in Path(gr.utils.get_upload_folder()).rglob("*"))
    # a file uploaded through the UI's own route is read, and answered
    up = client.post(
        "/gradio_api/upload", files={"files": ("x.png", open(files / "x.png", "rb"), "image/png")}
    )
    assert up.status_code == 200
    r = client.post(
        "/gradio_api/call/respond", json=respond_body(client, image=file_data(up.json()[0]))
    )
    assert r.status_code == 200
    events = client.get(f"/gradio_api/call/respond/{r.json()['event_id']}").text
    assert "event: complete" in events and "event: error" not in events


def test_only_the_routes_the_ui_page_uses_exist(client):
    for route in ("/gradio_api/run-history/buckets", "/monitoring", "/gradio_api/component_server"):
        assert client.get(route).status_code == 404, route
    assert client.get("/").status_code == 200 and client.get("/config").status_code == 200


def test_json_is_bounded_before_it_is_kept(client):
    nested: list = []
    for _ in range(70):
        nested = [nested]
    cases = {
        "10,000 deep": b"[" * 10_000 + b"]" * 10_000,
        "70 deep": json.dumps({"messages": nested}).encode(),
        "a 5,000-digit integer": b'{"max_tokens": ' + b"9" * 5000 + b"}",
        "a 30-digit integer": b'{"messages": [], "max_tokens": ' + b"9" * 30 + b"}",
        "300,000 empty lists": b"[" + b"[]," * 300_000 + b"[]]",
        "invalid UTF-8": b'{"messages": "\xff"}',
    }
    for route in (CHAT, "/gradio_api/queue/join"):
        for name, body in cases.items():
            r = client.post(route, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (route, name, r.text)
            assert r.json()["error"]["message"].startswith("body: expected"), (name, r.text)


def test_bodies_must_be_json_and_within_the_limit(client, tiny_model):
    for route in (CHAT, "/gradio_api/queue/join", "/gradio_api/call/respond"):
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": kind} if kind else {}
            r = client.post(route, content=b'{"messages": []}', headers=headers)
            assert r.status_code == 415, (route, kind, r.text)
    r = client.post(
        "/gradio_api/upload", content=b"{}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 415
    with TestClient(create_app(tiny_model, max_body_mb=0.01), base_url=LOCAL) as small:
        for route in (CHAT, "/gradio_api/queue/join"):
            r = small.post(
                route, content=b"x" * 20_000, headers={"content-type": "application/json"}
            )
            assert r.status_code == 413, (route, r.text)
        r = small.post("/gradio_api/upload", files={"files": ("a.png", b"x" * 20_000)})
        assert r.status_code == 413, r.text


@pytest.mark.parametrize("route", [CHAT, "/gradio_api/upload"])
def test_a_chunked_body_is_cut_off_at_the_limit(tiny_model, route):
    # no Content-Length: the guard counts the chunks as they come and answers 413 at 1 MiB
    live = LiveServer(create_app(tiny_model, max_body_mb=1))
    kind = "application/json" if route == CHAT else "multipart/form-data; boundary=b"
    head = (
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"  # 64 KiB chunks, up to 8 MiB
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
            s.sendall(head.encode())
            if route != CHAT:  # a well-formed upload of a file that never ends
                part = (
                    b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
                )
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            try:
                for _ in range(128):
                    s.sendall(piece)
                    sent += 0x10000
            except OSError:  # the server closed the connection after answering
                pass
            answer = s.recv(4096)
    finally:
        live.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"expected at most 1,048,576 bytes" in answer


def test_pydantic_errors_are_in_onellms_words(client):
    r = client.post(
        CHAT, json={"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
    )
    assert r.json()["error"]["message"] == "temperature: expected a number, got a string ('hot')"
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})
    assert r.json()["error"]["message"] == "max_tokens: expected at least 1, got a number (0)"
    r = client.post(CHAT, json={"messages": [{}] * 99_000})  # refused before pydantic sees it
    assert r.json()["error"]["message"] == "messages: expected at most 1,024 messages, got 99,000"
    r = client.post(CHAT, json=[1, 2])
    assert r.json()["error"]["message"].startswith("body: expected an object, got a list")


def test_an_unexpected_error_is_a_json_500_without_its_traceback(client, monkeypatch):
    service = client.app.state.service

    def broken(job):
        raise RuntimeError("secret internals at /srv/model")

    monkeypatch.setattr(service.batcher, "submit", broken)
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == {
        "message": "internal error (see the server's log)",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_foreign_host_and_origin_are_refused(tiny_model):
    app = create_app(tiny_model, ui=False, allowed_origins=["https://app.example.com"])
    with TestClient(app, base_url=LOCAL) as c:
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert c.get("/v1/models", headers={"host": "evil.example:8000"}).status_code == 403
        r = c.post(CHAT, json=ask, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["error"]["message"]
        assert c.post(CHAT, json=ask, headers={"origin": "null"}).status_code == 403
        assert c.post(CHAT, json=ask, headers={"origin": LOCAL}).status_code == 200
        assert (
            c.post(CHAT, json=ask, headers={"origin": "https://app.example.com"}).status_code == 200
        )
    assert check_exposure("127.0.0.1", None) is not None  # a warning on loopback
    assert check_exposure("0.0.0.0", "k") is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(OneLLMError, match="--api-key"):
            check_exposure(host, None)


def test_the_key_is_required_of_the_api_and_the_ui(tiny_model):
    app = create_app(tiny_model, model_id="tiny", api_key="sesame")
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/health").status_code == 200  # for load balancers
        assert c.post(CHAT, json=ask).status_code == 401
        assert c.post(CHAT, json=ask, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.post(CHAT, json=ask, headers={"authorization": "Bearer sesame"}).status_code == 200
        assert c.get("/config").status_code == 401
        page = c.get("/", headers={"accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.post("/login", data={"key": "wrong"}).status_code == 401
        assert c.get("/config").status_code == 401
        r = c.post("/login", data={"key": "sesame"}, follow_redirects=False)
        assert r.status_code == 303 and "sesame" not in r.headers["set-cookie"]
        assert c.get("/config").status_code == 200  # the cookie opens the UI
        assert c.post(CHAT, json=ask).status_code == 401  # the API takes the header only


def test_a_matroska_data_url_is_read_as_mkv(client, tmp_path, tiny_model):
    import numpy as np

    write_video(tmp_path / "clip.mkv", np.random.default_rng(0))
    part = {
        "type": "video_url",
        "video_url": {"url": data_url(tmp_path / "clip.mkv", "video/x-matroska")},
    }
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": [part]}], "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_a_connection_that_sends_no_request_head_is_closed(tiny_model, monkeypatch):
    monkeypatch.setattr(connections, "HEAD_TIMEOUT_S", 0.5)
    live = LiveServer(create_app(tiny_model, ui=False), http=connections.TimedH11)
    try:
        for opening in (b"", b"GET /health HTTP/1.1\r\nHo"):
            with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
                s.sendall(opening)
                start = time.monotonic()
                assert s.recv(100) == b""  # closed by the server
                assert time.monotonic() - start < 3
    finally:
        live.close()


def test_beyond_loopback_without_a_key_the_server_does_not_start(monkeypatch, capsys):
    import onellm.cli.serve as verb
    from onellm.cli.main import main

    monkeypatch.delenv("ONELLM_API_KEY", raising=False)
    monkeypatch.setattr(verb, "load_model", lambda *a, **kw: pytest.fail("the model loaded"))
    assert main(["serve", str(TINY), "--host", "0.0.0.0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and err[0].startswith("onellm: error:")


def test_a_saved_run_is_served_under_its_path():
    from onellm.cli.serve import served_name

    assert served_name("runs/demo/stage4/final/") == "runs/demo/stage4/final"
    assert served_name("./runs/demo/stage4/final") == "runs/demo/stage4/final"
    assert served_name(str(TINY)) == "tiny" and served_name("tiny") == "tiny"
