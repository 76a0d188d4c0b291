"""How much of a request the server takes in: its body's bytes, and its JSON's elements,
depth and numbers, each checked before the cost it bounds is paid.

A body is counted as it arrives (a declared `Content-Length` over the limit is refused
before any of it is read; a chunked body when it passes the limit). JSON is counted before
it is parsed: every element after the first needs a `,` and every container a `[` or `{`,
so counting those bytes (inside strings too: an over-count, never an under-count) bounds
the objects `json.loads` can make. Depth and integer sizes are checked on the parsed value
without recursion. 10,000-deep nesting, a 5,000-digit integer and 24 MiB of `[]` are each a
400 that costs the server a few MB.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

MAX_DEPTH = 64  # the deepest legitimate body (a Gradio chat history) is under 10
MAX_ITEMS = 200_000  # a 1 MB body of `[{},{},...]` at this count makes ~15 MB of objects
MAX_INT = 2**63  # no field takes a larger integer


class BodyError(Exception):
    """A request refused for its body: the HTTP status and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def too_big(limit: int) -> BodyError:
    return BodyError(413, f"body: expected at most {limit:,} bytes (--max-body-mb), got more")


def check_declared(headers: dict[str, str], limit: int) -> None:
    """Refuse a body whose declared length is over `limit` (413), before reading it."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.strip().isdigit():
        raise BodyError(400, f"content-length: expected a number of bytes, got {declared!r}")
    if int(declared) > limit:
        raise too_big(limit)


async def read_body(receive: Callable[[], Awaitable[dict]], limit: int) -> bytearray:
    """The whole body from an ASGI `receive`, refused (413) as soon as it passes `limit`.
    One growing buffer, handed on without a copy (json.loads reads a bytearray)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError(400, "body: the client left before sending all of it")
        body += message.get("body", b"")
        if len(body) > limit:
            raise too_big(limit)
        if not message.get("more_body", False):
            return body


def load_json(body: bytes | bytearray) -> Any:
    """`body` parsed, once its size is known to be bounded: 400 for malformed JSON, more
    than `MAX_ITEMS` elements, nesting deeper than `MAX_DEPTH` or an integer past 64 bits."""
    items = body.count(b",") + body.count(b"[") + body.count(b"{")
    if items > MAX_ITEMS:
        raise BodyError(
            400,
            f"body: expected JSON of at most {MAX_ITEMS:,} elements, got up to {items:,} "
            "(commas and brackets)",
        )
    try:
        data = json.loads(body)
    except RecursionError as e:
        raise BodyError(400, f"body: expected JSON nested at most {MAX_DEPTH} deep") from e
    except UnicodeDecodeError as e:
        raise BodyError(400, f"body: expected UTF-8 JSON, got undecodable bytes ({e})") from e
    except ValueError as e:  # JSONDecodeError, and an integer past Python's digit limit
        raise BodyError(400, f"body: expected a JSON object, got malformed JSON ({e})") from e
    check_shape(data)
    return data


def check_shape(data: Any) -> None:
    """Depth and integer sizes of parsed JSON, walked with a stack (no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BodyError(400, f"body: expected JSON nested at most {MAX_DEPTH} deep")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(value, int) and not -MAX_INT <= value < MAX_INT:
            raise BodyError(400, "body: expected integers of at most 64 bits, got a larger one")


def walk(data: Any):
    """Every dict in parsed JSON (already checked for depth), without recursion."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            yield value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
