"""`onellm serve`: an OpenAI-compatible API and a Gradio UI over one model, in one process.

    app.py      create_app / serve: the routes, the queue's lifespan, the UI mounted at /
    api.py      POST /v1/chat/completions (JSON or server-sent events), /v1/models, /health
    schemas.py  the request's pydantic models; completion, chunk and error bodies
    inputs.py   messages and uploads -> a checked Conversation (the modality's own reader)
    batcher.py  the request queue: concurrent requests share `generate` calls
    ui.py       the Gradio Blocks

FastAPI, uvicorn and Gradio are imported here only: `import onellm` does not load them.
"""
