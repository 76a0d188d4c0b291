"""pydantic's validation errors in onellm's words: the field, what was expected, what was
given. `content.str: Input should be a valid string` becomes `messages[0].content: expected
a string or a list of content parts, got a number (5)`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
    "missing": "a value",
    "none_required": "null",
}
BRANCHES = {"str": "a string", "list[ContentPart]": "a list of content parts"}


def place(loc: tuple) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content' (a union's branch tag,
    such as 'str' or 'list[ContentPart]', dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in BRANCHES or not str(part).isidentifier() or part in ("int", "float"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def expected(err: dict[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    tag = err["loc"][-1] if err["loc"] else None
    if kind in ("model_type", "model_attributes_type", "list_type") and tag in BRANCHES:
        return BRANCHES[tag]
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
        "too_short": ("at least", "min_length"),
        "too_long": ("at most", "max_length"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        items = " items" if kind.startswith("too_") else ""
        return f"{words} {ctx.get(key)}{items}"
    return EXPECTED.get(kind, err["msg"][0].lower() + err["msg"][1:])


def given(value: Any) -> str:
    if value is None:
        return "null"
    kind = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    name = next((v for t, v in kind.items() if type(value) is t), type(value).__name__)
    if isinstance(value, list | dict):
        return f"{name} of {len(value)}"
    shown = repr(value)
    return f"{name} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def reworded(e: ValidationError) -> str:
    """The first failing field's message; a union's branches joined ('a string or ...')."""
    errors = e.errors()
    first = place(errors[0]["loc"])
    if errors[0]["msg"].startswith("expected "):  # a schema's own message, in these words
        return f"{first}: {errors[0]['msg']}"
    same = [err for err in errors if place(err["loc"]) == first]
    wants = list(dict.fromkeys(expected(err) for err in same))
    if "missing" in (err["type"] for err in same):
        return f"{first}: expected a value, got none"
    if "extra_forbidden" in (err["type"] for err in same):
        return f"{first}: expected no field of this name, got {given(same[0]['input'])}"
    return f"{first}: expected {' or '.join(wants)}, got {given(same[0]['input'])}"
