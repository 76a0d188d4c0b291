"""`onellm serve RUN`: one model behind an OpenAI-compatible API and a Gradio UI
(onellm/serve/), in one process. FastAPI, uvicorn and Gradio are the serve extra."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from onellm.cli.chat import load_model
from onellm.config import is_config
from onellm.errors import OneLLMError
from onellm.serve.exposure import check_exposure


def need_serve_extra(*, ui: bool) -> None:
    """One line naming the extra, before the model loads, if the server's libraries are
    not installed (Gradio only for the UI)."""
    needed = ("fastapi", "uvicorn", "gradio") if ui else ("fastapi", "uvicorn")
    if any(importlib.util.find_spec(name) is None for name in needed):
        raise OneLLMError("onellm serve needs the serve extra: pip install 'onellm[serve]'")


def served_name(run: str) -> str:
    """The model's id when --served-model-name is not given: a YAML's name (`tiny`), else
    the run's path as given (`runs/demo/stage4/final`), as vLLM names a model by its path;
    a saved run's last folder (`final`, `best`) says nothing of which run it is."""
    run = run.rstrip("/").removeprefix("./") or run
    return Path(run).stem if is_config(run) else run


def serve_verb(args: argparse.Namespace) -> int:
    need_serve_extra(ui=not args.no_ui)
    api_key = args.api_key or os.environ.get("ONELLM_API_KEY") or None
    check_exposure(args.host, api_key)  # beyond loopback without a key: one line, before loading
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    model = load_model(args.run, device=args.device, quantization=quantization)
    # the serve extra (FastAPI, uvicorn), found installed above
    from onellm.serve.app import serve

    model_id = args.name or served_name(args.run)
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
        api_key=api_key,
        allowed_origins=args.allowed_origin,
    )
    return 0
