"""The interactive chat session behind `onellm chat RUN` without a prompt."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from onellm.errors import InputError

HELP = """commands:
  /input PATH       use this file as the input (kept until changed)
  /modality NAME    the input's modality
  /noinput          chat without an input
  /reset            forget the conversation so far
  /quit             leave (also /exit or Ctrl-D)
anything else is a prompt; an empty line asks for a caption of the input"""


def session(
    model: Any,
    *,
    modality: str | None = None,
    source: str | None = None,
    read: Callable[[str], str] = input,
    write: Callable[..., None] = print,
    save_dir: str | None = None,
    **chat_kwargs: Any,
) -> list[tuple[str, str]]:
    """Read prompts until /quit or end of input; return the conversation's turns. A reply's
    masks and images are saved under `save_dir` and their paths written."""
    history: list[tuple[str, str]] = []
    replies, stamp = 0, time.strftime("%Y%m%d-%H%M%S")  # files of earlier sessions stay
    write(HELP)
    while True:
        try:
            line = read(f"[{modality or 'text'}{': ' + str(source) if source else ''}]> ").strip()
        except EOFError:
            break
        cmd, _, arg = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            break
        if cmd == "/help":
            write(HELP)
        elif cmd == "/input":
            source, history = arg.strip() or None, []
        elif cmd == "/modality":
            modality, history = arg.strip() or None, []
        elif cmd == "/noinput":
            source, modality, history = None, None, []
        elif cmd == "/reset":
            history = []
        elif cmd.startswith("/"):
            write(f"unknown command {cmd}; /help lists them")
        else:
            prompt = line or None
            try:
                pieces = model.chat(
                    source,
                    modality=modality if source else None,
                    prompt=prompt,
                    history=history,
                    stream=True,
                    **chat_kwargs,
                )
                reply = ""
                for piece in pieces:
                    reply += piece
                    write(piece, end="", flush=True)
                write()
            except InputError as e:  # a bad file or prompt: say so and keep the session
                write(f"error: {e}")
                continue
            replies += 1
            if save_dir is not None:
                for path in pieces.response.save(save_dir, stem=f"reply-{stamp}-{replies}"):
                    write(f"saved {path}")
            if prompt is not None:
                history.append((prompt, reply))
    return history
