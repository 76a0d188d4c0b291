"""`onellm serve RUN`: one model behind an OpenAI-compatible API and a Gradio UI
(onellm/serve/), in one process. FastAPI, uvicorn and Gradio are the serve extra."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from onellm.cli.chat import load_model
from onellm.config import is_config
from onellm.errors import OneLLMError


def need_serve_extra(*, ui: bool) -> None:
    """One line naming the extra, before the model loads, if the server's libraries are
    not installed (Gradio only for the UI)."""
    needed = ("fastapi", "uvicorn", "gradio") if ui else ("fastapi", "uvicorn")
    if any(importlib.util.find_spec(name) is None for name in needed):
        raise OneLLMError("onellm serve needs the serve extra: pip install 'onellm[serve]'")


def serve_verb(args: argparse.Namespace) -> int:
    need_serve_extra(ui=not args.no_ui)
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    model = load_model(args.run, device=args.device, quantization=quantization)
    # the serve extra (FastAPI, uvicorn), found installed above
    from onellm.serve.app import serve

    run = Path(args.run.rstrip("/"))
    model_id = args.name or (run.stem if is_config(args.run) else run.name)
    print(f"onellm: serving {model_id} on http://{args.host}:{args.port} (UI at /, API at /v1)")
    serve(
        model,
        host=args.host,
        port=args.port,
        model_id=model_id,
        allow_dir=args.allow_dir,
        max_body_mb=args.max_body_mb,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        ui=not args.no_ui,
    )
    return 0
