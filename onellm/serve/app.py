"""One server process: the API routes, the shared request queue and the Gradio UI at `/`.

onellm serve RUN [--host 127.0.0.1] [--port 8000] [--device auto] [--load-in-8bit]
                 [--allow-dir DIR] [--max-body-mb 32] [--max-batch 8] [--batch-wait-ms 20]
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from onellm.serve.api import Service, router
from onellm.serve.batcher import Batcher

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
) -> FastAPI:
    """The FastAPI app serving `model` (put in eval mode). The queue's worker runs while the
    app's lifespan does (uvicorn, or `with TestClient(app)`). `generate_kwargs`: extra
    transformers `generate` options for every batch (e.g. `repetition_penalty`)."""
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

    app = FastAPI(title="onellm", lifespan=lifespan)
    app.state.service = service
    app.include_router(router(service))
    if ui:
        # gradio (seconds to import) and the UI built on it load only when the UI is asked for
        import gradio as gr

        from onellm.serve.ui import build_ui  # imports gradio too

        blocks = build_ui(service).queue(default_concurrency_limit=max(2 * max_batch, 4))
        app = gr.mount_gradio_app(
            app, blocks, path="/", max_file_size=f"{max_body_mb}mb", footer_links=[], ssr_mode=False
        )
    return app


def serve(model: OneLLM, *, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Run the app with uvicorn until interrupted."""
    uvicorn.run(create_app(model, **kwargs), host=host, port=port, log_level="info")
