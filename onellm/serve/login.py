"""How a request proves it holds the server's key (`--api-key`).

API clients send `Authorization: Bearer KEY`, as OpenAI's do. A browser user types the key
once into the form at `/login`; the answer sets an HttpOnly, SameSite=Strict cookie holding
an HMAC of the key (never the key itself), which the UI's routes accept beside the header.
The key never travels in a URL, so it stays out of access logs and browser history.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope

ROUTE = "/login"
COOKIE = "onellm_key"

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>onellm · key</title></head>
<body style="font-family:sans-serif;max-width:28em;margin:4em auto">
<h3>onellm</h3><p>This server asks for its key (the one it was started with, --api-key).</p>
<form method="post" action="/login"><input type="password" name="key" autofocus
 style="width:100%" placeholder="key"><p><button type="submit">Open the UI</button></p></form>
<p style="color:#b00">{message}</p></body></html>"""


def token(key: str) -> str:
    """The cookie's value: fixed for a key, useless as the key itself."""
    return hmac.new(key.encode(), b"onellm-ui", hashlib.sha256).hexdigest()


def allowed(headers: Headers, key: str, *, cookie: bool) -> bool:
    """The request carries the key as a bearer token, or (`cookie`) the login's cookie."""
    given = headers.get("authorization", "")
    if given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), key.encode()):
        return True
    if not cookie:
        return False
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and hmac.compare_digest(value.encode(), token(key).encode()):
            return True
    return False


def answer(scope: Scope, key: str) -> Response:
    """GET: the form. POST (urlencoded, read and bounded by the guard): the cookie and the
    UI, or the form again."""
    if scope["method"] != "POST":
        return HTMLResponse(PAGE.format(message=""))
    body = scope.get("state", {}).get("body", b"")
    given = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]
    if not hmac.compare_digest(given.encode(), key.encode()):
        return HTMLResponse(PAGE.format(message=html.escape("wrong key")), status_code=401)
    page = RedirectResponse("/", status_code=303)
    page.set_cookie(COOKIE, token(key), httponly=True, samesite="strict", path="/")
    return page
