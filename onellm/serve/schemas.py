"""The wire format: OpenAI's chat completion request, and the replies built from a `ChatResponse`.

Content parts (read by the library's own reader, onellm/inference/messages.py, the same
as `model.chat(messages=...)`): OpenAI's `text`, `image_url` (a data: URL), `input_audio`
(base64 + format) and vLLM's `video_url`; `onellm_input` for any model modality by name:
    {"type": "onellm_input", "onellm_input": {"modality": "point", "data": "<base64>", "format": "npy"}}
    {"type": "onellm_input", "onellm_input": {"modality": "depth", "parts": {
        "rgb": {"data": "...", "format": "png"}, "depth": {"data": "...", "format": "npy"}}}}
A part may give `path` (or an `image_url` a file:// URL) instead of data when the server
allows a folder (`--allow-dir`). Masks and images come back beside the text in the
message, one list per output kind's reply field (`masks`, `images`, ...: base64 PNGs with
the position of their `<seg>` / `<gen>` / ... token).
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from onellm.inference.messages import ROLES
from onellm.modeling.template import cut_at_stop

if TYPE_CHECKING:
    from onellm.inference.reply import ChatResponse
    from onellm.model import OneLLM


def _content(value: Any) -> Any:
    """A message's content: text, a list of parts (each read and checked by
    onellm/inference/messages.py, which names the bad field), or null."""
    if value is None or isinstance(value, (str, list)):
        return value
    raise PydanticCustomError(
        "content_type",
        "expected a string or a list of content parts (objects with a 'type': text, "
        "image_url, input_audio, video_url, onellm_input), got {given}",
        {"given": type(value).__name__},
    )


def _role(value: Any) -> Any:
    if isinstance(value, str) and value in ROLES:
        return value
    raise PydanticCustomError(
        "role",
        "expected one of {roles}, got {given}",
        {"roles": ", ".join(ROLES), "given": repr(value)[:50]},
    )


class Message(BaseModel):
    """One chat message; its parts are read by the library's reader (messages.py)."""

    role: Annotated[str, BeforeValidator(_role)]
    content: Annotated[Any, BeforeValidator(_content)] = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown top-level keys are ignored, as OpenAI clients
    send some this server has no use for; greedy unless `temperature` > 0."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def png_base64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def output_parts(model: OneLLM, reply: ChatResponse) -> dict[str, list[dict[str, Any]]]:
    """What the output experts made, by reply field (`masks`, `images`, ...), as base64 PNGs,
    each with its kind's token, the index of its output token among the reply's tokens
    (`position`: a run of `tokens` tokens makes one item) and the length of the text before
    it (`offset`)."""
    tok, stops, ids = model.text_tokenizer, model.config.chat.stop, reply.token_ids

    def offset(pos: int) -> int:
        text = tok.decode(ids[:pos], skip_special_tokens=True)
        return min(len(cut_at_stop(text, stops)), len(reply.text))

    out: dict[str, list[dict[str, Any]]] = {}
    for kind, expert in model.outputs.items():
        items = reply.outputs.get(expert.field)
        if not items:
            continue
        at = [i for i, t in enumerate(ids) if t == expert.token_id][:: expert.tokens]
        pictures = [expert.as_png(item) for item in items]
        out[expert.field] = [
            {
                "token": f"<{kind}>",
                "position": p,
                "offset": offset(p),
                "width": im.width,
                "height": im.height,
                "png": png_base64(im),
            }
            for im, p in zip(pictures, at, strict=False)
        ]
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    cid: str, model_id: str, message: dict[str, Any], finish: str, use: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": use,
    }


def chunk(
    cid: str,
    model_id: str,
    delta: dict[str, Any],
    finish: str | None = None,
    use: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One server-sent event of a streamed completion (`usage` chunks have no choices)."""
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model_id,
    }
    out["choices"] = [] if use else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if use:
        out["usage"] = use
    return out


def error(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
