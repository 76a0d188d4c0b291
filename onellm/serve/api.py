"""The OpenAI-compatible routes: `POST /v1/chat/completions` (JSON or server-sent events),
`GET /v1/models`, `GET /health`.

A bad request is answered with a 4xx and OpenAI's error body carrying the `InputError`'s
text; nothing of it reaches the queue. The body arrives read and parsed by the guard
(guard.py: its size, type and JSON shape bounded).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from onellm.errors import InputError
from onellm.serve import schemas
from onellm.serve.batcher import Batcher, Busy, Job
from onellm.serve.inputs import Forbidden, Uploads, prepare, read_messages
from onellm.serve.wording import reworded

if TYPE_CHECKING:
    from onellm.model import OneLLM


# pydantic checks every item of a list before it reports any: 99,000 empty messages (a
# 0.3 MB body) took 2 s and +116 MB of RSS to be refused; no context holds this many turns
MAX_MESSAGES = 1024


@dataclass
class Service:
    """What the routes and the UI share: the model, its queue, the operator's limits."""

    model: OneLLM
    batcher: Batcher
    model_id: str
    allow_dir: Path | None = None
    max_body: int = 32 * 2**20
    default_max_tokens: int = 256
    started: int = 0

    @property
    def context(self) -> int:
        return self.model.llm.config.max_position_embeddings


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def failure(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(schemas.error(message, kind), status_code=status)


def parse(service: Service, data: Any) -> tuple[schemas.ChatRequest, Any, int]:
    """Parsed JSON -> (request, prepared conversation, max_tokens); runs in a worker thread
    (it decodes uploads)."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise RequestError(
            400, f"messages: expected at most {MAX_MESSAGES:,} messages, got {len(messages):,}"
        )
    try:
        req = schemas.ChatRequest.model_validate(data)
    except ValidationError as e:
        raise RequestError(400, reworded(e)) from e
    if req.model not in (None, service.model_id):
        raise RequestError(
            404,
            f"model: expected {service.model_id!r} (GET /v1/models), got {req.model!r}",
            "not_found_error",
        )
    max_tokens = req.max_completion_tokens or req.max_tokens or service.default_max_tokens
    uploads = Uploads(service.allow_dir)
    try:
        system, history, prompt, raws = read_messages(service.model, req, uploads)
        prepared = prepare(
            service.model, raws, prompt, history, system, service.context, max_tokens
        )
    except Forbidden as e:
        raise RequestError(403, str(e), "permission_error") from e
    except InputError as e:
        raise RequestError(400, uploads.hide(str(e))) from e
    finally:
        uploads.close()
    return req, prepared, max_tokens


def router(service: Service) -> APIRouter:
    api = APIRouter()

    @api.get("/health")
    def health() -> dict[str, Any]:
        q = service.model.quantization
        return {
            "status": "ok",
            "model": service.model_id,
            "queued": service.batcher.jobs.qsize(),
            "batches": dict(service.batcher.sizes),
            "quantization": q and str(q),
        }

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        m = service.model
        card = {
            "id": service.model_id,
            "object": "model",
            "created": service.started,
            "owned_by": "onellm",
            "modalities": sorted(m.modalities),
            "outputs": sorted(m.outputs.token_ids),
        }
        return {"object": "list", "data": [card]}

    @api.post("/v1/chat/completions")
    async def completions(request: Request):
        data = request.scope.get("state", {}).get("json")
        if data is None:  # the guard parsed any JSON body; this one had none
            return failure(400, "body: expected a JSON object, got none")
        try:
            req, prepared, max_tokens = await run_in_threadpool(parse, service, data)
        except RequestError as e:
            return failure(e.status, str(e), e.kind)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind: str, value: Any) -> None:  # called from the batcher's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                pass

        job = Job(
            prepared.conversation,
            max_tokens,
            emit,
            stream=req.stream,
            temperature=req.temperature,
            top_p=req.top_p,
        )
        try:
            service.batcher.submit(job)
        except Busy as e:
            return failure(503, str(e), "server_error")
        cid = schemas.new_id()
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                stream(service, cid, job, events, prepared, usage), media_type="text/event-stream"
            )
        kind, value = await answer(request, events, job)
        if kind == "gone":
            return failure(499, "the client closed the connection", "client_closed")
        if kind == "error":
            return failure(500, f"generation failed: {value}", "server_error")
        message = {
            "role": "assistant",
            "content": value.text,
            **schemas.output_parts(service.model, value),
        }
        return schemas.completion(
            cid,
            service.model_id,
            message,
            finish(value, max_tokens),
            schemas.usage(prepared.prompt_tokens, len(value.token_ids)),
        )

    return api


async def answer(request: Request, events: asyncio.Queue, job: Job) -> tuple[str, Any]:
    """A whole answer's ("done", reply) or ("error", e); ("gone", None) once the client has
    closed its connection, whose job is then cancelled (Starlette cancels only streams)."""
    while True:
        try:
            kind, value = await asyncio.wait_for(events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return "gone", None
            continue
        if kind in ("done", "error"):
            return kind, value


def finish(reply, max_tokens: int) -> str:
    return "length" if len(reply.token_ids) >= max_tokens else "stop"


async def stream(
    service: Service, cid: str, job: Job, events: asyncio.Queue, prepared, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the last content chunk carries the
    masks and images; then `[DONE]`. A client that leaves cancels its queued job."""
    mid = service.model_id

    def event(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    try:
        yield event(schemas.chunk(cid, mid, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield event(schemas.chunk(cid, mid, {"content": value}))
            elif kind == "error":
                yield event(schemas.error(f"generation failed: {value}", "server_error"))
                break
            else:
                outputs = schemas.output_parts(service.model, value)
                yield event(schemas.chunk(cid, mid, outputs, finish(value, job.max_tokens)))
                if include_usage:
                    use = schemas.usage(prepared.prompt_tokens, len(value.token_ids))
                    yield event(schemas.chunk(cid, mid, {}, use=use))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()
