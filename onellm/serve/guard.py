"""The gate in front of every route (the API's and the mounted Gradio UI's): who may ask,
which routes exist, what a body may be. It runs before any route reads a byte.

In order: the `Host` header must name the address the server is bound to (a DNS-rebinding
page names its own), a browser's `Origin` must be this server or one the operator listed
(`--allowed-origin`), the UI's routes are the few its page uses (none that fetches a URL or
reads a folder), the key (`--api-key`) is checked, a body must be JSON (an upload to the
UI's upload route: multipart; the login form: urlencoded), and its size and shape are
bounded (limits.py). A JSON body sent to the UI may name no file but those uploaded
through the UI's own upload route. An error no route expected is a JSON 500 without its
traceback (the server's log keeps it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onellm.serve import login, schemas
from onellm.serve.exposure import LOOPBACK_NAMES
from onellm.serve.limits import BodyError, check_declared, load_json, read_body, too_big, walk

log = logging.getLogger("onellm.serve")

API = re.compile(r"/v1/.*|/health")
# the routes the Gradio page calls (found by driving it in Chromium: tests/serve/test_browser.py);
# Gradio's others (a URL proxy, run-history buckets, component servers, recording through
# ffmpeg, monitoring) are not this server's to offer
UI_ROUTES = re.compile(
    r"/(?:|config/?|theme\.css|robots\.txt|favicon\.ico|manifest\.json|pwa_icon(?:/\d+)?"
    r"|(?:assets|static|svelte)/.*"
    r"|gradio_api/(?:info/?|heartbeat/[\w-]+|queue/(?:join|data)|upload|upload_progress"
    r"|file=.*|call/[\w-]+(?:/[\w-]+)?|cancel|startup-events|app_id/?))"
)
UPLOAD_ROUTE = "/gradio_api/upload"


@dataclass(frozen=True)
class Policy:
    """The operator's rules. `hosts`: the names a request's Host may carry (None: any,
    for a server bound to every address, where the key is required)."""

    max_body: int
    api_key: str | None = None
    hosts: frozenset[str] | None = LOOPBACK_NAMES
    origins: frozenset[str] = frozenset()
    uploads: Path | None = None  # the UI's upload folder; None: no UI


KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def refuse(status: int, message: str, kind: str | None = None) -> Response:
    """OpenAI's error body; its type follows the status unless given."""
    kind = kind or KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse(schemas.error(message, kind), status_code=status)


class Guard:
    """ASGI middleware applying a `Policy` to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # neither the API nor Gradio 6's page uses one
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            answer = self.check(scope)
            if answer is None:
                receive = await self.body(scope, receive)
        except BodyError as e:
            answer = refuse(e.status, str(e))
        if answer is None and scope["path"] == login.ROUTE and self.policy.api_key is not None:
            answer = login.answer(scope, self.policy.api_key)
        if answer is not None:
            await answer(scope, receive, send)
            return
        await self.run(scope, receive, send)

    def check(self, scope: Scope) -> Response | None:
        """An answer refusing the request (or the login page), else None."""
        headers, path, p = Headers(scope=scope), scope["path"], self.policy
        host = headers.get("host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if p.hosts is not None and name.lower() not in p.hosts:
            return refuse(
                403,
                f"host: expected one of {', '.join(sorted(p.hosts))}, got {host!r} (a page "
                "on another name cannot call this server)",
            )
        origin = headers.get("origin")
        if origin is not None and origin not in p.origins and urlsplit(origin).netloc != host:
            return refuse(
                403, f"origin: expected this server's own pages or --allowed-origin, got {origin!r}"
            )
        ui = not API.fullmatch(path)
        if path == login.ROUTE and p.api_key is not None:
            return None  # the form and its answer are the login module's (run)
        if ui and (p.uploads is None or not UI_ROUTES.fullmatch(path)):
            return refuse(404, f"path: no route {path!r}")
        if ui and path.startswith("/gradio_api/file=") and "://" in unquote(path):
            return refuse(403, "file: this server fetches no URL")
        if p.api_key is not None and path != "/health":
            if not login.allowed(headers, p.api_key, cookie=ui):
                if ui and scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
                    return RedirectResponse(login.ROUTE, status_code=303)
                answer = refuse(
                    401,
                    "authorization: expected 'Bearer <the server's --api-key>', got "
                    + ("a wrong key" if headers.get("authorization") else "none"),
                )
                answer.headers["WWW-Authenticate"] = "Bearer"
                return answer
        return None

    async def body(self, scope: Scope, receive: Receive) -> Receive:
        """`receive` for the app, once the body is known to be of an allowed type and size:
        a JSON body read, checked and replayed; an upload counted as the app reads it."""
        headers = Headers(scope=scope)
        if "content-length" not in headers and "transfer-encoding" not in headers:
            return receive  # no body
        if headers.get("content-length") == "0":
            return receive
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        path = scope["path"]
        allowed = {"application/json"}
        if path == UPLOAD_ROUTE:
            allowed = {"multipart/form-data"}
        elif path == login.ROUTE:
            allowed = {"application/x-www-form-urlencoded"}
        if kind not in allowed:
            raise BodyError(
                415, f"content-type: expected {' or '.join(sorted(allowed))}, got {kind or 'none'}"
            )
        check_declared(headers, self.policy.max_body)
        if kind == "multipart/form-data":
            return receive  # counted in `run`
        body = await read_body(receive, self.policy.max_body)
        if kind == "application/json":
            data = load_json(body)
            if not API.fullmatch(path):
                check_files(data, self.policy.uploads)
            scope.setdefault("state", {})["json"] = data
        scope.setdefault("state", {})["body"] = body
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the client's disconnect
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return replay

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the body counted as it is read (413 past the limit) and any error
        it did not answer turned into a JSON 500."""
        limit, count, over, started = self.policy.max_body, 0, False, False

        async def counted() -> Message:
            nonlocal count, over
            message = await receive()
            count += len(message.get("body", b""))
            if count > limit:
                over = True  # the app sees the client leave; the 413 is sent below
                return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to a body cut short: the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not over:
                log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
                if not started:
                    await refuse(500, "internal error (see the server's log)")(scope, receive, send)
                return
        if over and not started:
            await refuse(413, str(too_big(limit)))(scope, receive, send)


def check_files(data, uploads: Path | None) -> None:
    """A JSON body for the UI names no file but the UI's own uploads, and no component
    for the server to build (Gradio's chat messages may carry one)."""
    for d in walk(data):
        if d.get("type") == "component" or "constructor_args" in d:
            raise BodyError(403, "data: expected text and uploaded files, got a component")
        path = d.get("path")
        if not isinstance(path, str):
            continue
        try:
            inside = uploads is not None and Path(path).resolve().is_relative_to(uploads)
        except (OSError, ValueError):  # a NUL byte, a path too long
            inside = False
        if not inside:
            raise BodyError(
                403,
                "path: expected a file uploaded through this UI (/gradio_api/upload), "
                f"got {path[:200]!r}; this server reads no other file and fetches no URL",
            )
