"""One server process: the API routes, the shared request queue and the Gradio UI at `/`.

onellm serve RUN [--host 127.0.0.1] [--port 8000] [--device auto] [--load-in-8bit]
                 [--allow-dir DIR] [--max-body-mb 32] [--max-batch 8] [--batch-wait-ms 20]
                 [--api-key KEY] [--allowed-origin URL ...] [--served-model-name ID]

Every request passes the guard (guard.py: host, origin, key, routes, body) before a route.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from onellm.serve.api import Service, router
from onellm.serve.batcher import Batcher
from onellm.serve.connections import IDLE_TIMEOUT_S, TimedH11
from onellm.serve.exposure import allowed_hosts, check_exposure
from onellm.serve.guard import Guard, Policy

if TYPE_CHECKING:
    from onellm.model import OneLLM


def create_app(
    model: OneLLM,
    *,
    model_id: str = "onellm",
    allow_dir: str | Path | None = None,
    max_body_mb: float = 32,
    max_batch: int = 8,
    batch_wait_ms: float = 20,
    max_queue: int = 256,
    default_max_tokens: int = 256,
    ui: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    allowed_origins: Iterable[str] = (),
) -> FastAPI:
    """The FastAPI app serving `model` (put in eval mode). The queue's worker runs while the
    app's lifespan does (uvicorn, or `with TestClient(app, base_url="http://127.0.0.1")`).
    `generate_kwargs`: extra transformers `generate` options for every batch (e.g.
    `repetition_penalty`). `host`: the address it will be bound to, which a request's Host
    header must name; `api_key`: required of every request but /health when given."""
    model.eval()
    batcher = Batcher(
        model,
        max_batch=max_batch,
        max_wait_s=batch_wait_ms / 1000,
        max_queue=max_queue,
        generate_kwargs=generate_kwargs,
    )
    service = Service(
        model,
        batcher,
        model_id,
        allow_dir=Path(allow_dir).resolve() if allow_dir is not None else None,
        max_body=int(max_body_mb * 2**20),
        default_max_tokens=default_max_tokens,
        started=int(time.time()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="onellm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.include_router(router(service))
    uploads = None
    if ui:
        # gradio (seconds to import) and the UI built on it load only when the UI is asked for
        import gradio as gr

        from onellm.serve.ui import build_ui  # imports gradio too

        blocks = build_ui(service).queue(default_concurrency_limit=max(2 * max_batch, 4))
        app = gr.mount_gradio_app(
            app,
            blocks,
            path="/",
            max_file_size=int(max_body_mb * 2**20),
            footer_links=[],
            ssr_mode=False,
        )
        # mounted, not launched, Gradio skips its own check that a file named in a request was
        # uploaded through it; the guard checks that first, and this keeps Gradio's check on too
        blocks.has_launched = True
        uploads = Path(gr.utils.get_upload_folder()).resolve()
    policy = Policy(
        max_body=int(max_body_mb * 2**20),
        api_key=api_key or None,
        hosts=allowed_hosts(host),
        origins=frozenset(o.rstrip("/") for o in allowed_origins),
        uploads=uploads,
    )
    app.add_middleware(Guard, policy=policy)
    return app


def serve(
    model: OneLLM,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    **kwargs: Any,
) -> None:
    """Run the app with uvicorn until interrupted: refused beyond loopback without a key
    (`OneLLMError`), idle connections closed (connections.py)."""
    warning = check_exposure(host, api_key)
    if warning:
        print(f"onellm: warning: {warning}", file=sys.stderr)
    app = create_app(model, host=host, api_key=api_key, **kwargs)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        http=TimedH11,
        timeout_keep_alive=IDLE_TIMEOUT_S,
    )
    uvicorn.Server(config).run()
