"""From a request's messages (or the UI's uploads) to one `Conversation`, checked.

The messages are read by the library's own reader (onellm/inference/messages.py, what
`model.chat(messages=...)` reads) under the server's policy, `Uploads`: the request's
bytes (base64 and data: URLs) go to a temporary file with the format's suffix and the
modality reads it as it reads a user's file; the file is gone before the request is
queued. A path is read only inside the folder the operator allowed (`--allow-dir`),
after resolving links and `..`, and a folder (of video frames) only if every entry in
it resolves inside too. Nothing is fetched, and parts carry no Python objects.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onellm.errors import InputError
from onellm.inference.chat import Conversation, pixels_of, prompt_ids, segments_of
from onellm.inference.context import check_fits
from onellm.inference.media import Media, check_path, shown, stat_path
from onellm.inference.messages import Dialogue, check_dialogue, check_typed
from onellm.inference.messages import read_messages as read_dialogue

if TYPE_CHECKING:
    from onellm.model import OneLLM
    from onellm.serve.schemas import ChatRequest

__all__ = ["Forbidden", "Prepared", "Uploads", "check_typed", "prepare", "read_messages"]


class Forbidden(InputError):
    """A request named a server path it may not read (HTTP 403)."""


@dataclass
class Prepared:
    """A checked request: its conversation and its prompt's length in tokens."""

    conversation: Conversation
    prompt_tokens: int


def allowed_path(path: str, allow_dir: Path | None, where: str) -> Path:
    """`path` resolved, if it lies inside `allow_dir` (a folder: every entry in it too);
    else `Forbidden`. Containment is checked before existence, so a client cannot learn
    which files exist outside the folder."""
    if allow_dir is None:
        raise Forbidden(
            f"{where}: expected the file's bytes (base64), got a server path; this server reads "
            "no files (the operator can allow a folder with --allow-dir)"
        )
    check_path(path, where)
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a link loop (RuntimeError before Python 3.13)
        raise InputError(f"{where}: expected a file path, got {shown(path)} ({e})") from e
    root = allow_dir.resolve()
    if not resolved.is_relative_to(root):
        raise Forbidden(f"{where}: expected a path inside the allowed folder, got {shown(path)}")
    mode = stat_path(str(resolved), where).st_mode
    if stat.S_ISDIR(mode):
        for entry in os.scandir(resolved):  # what a reader of the folder may open
            if not Path(entry.path).resolve().is_relative_to(root):
                raise Forbidden(
                    f"{where}: expected a folder whose files lie inside the allowed folder, "
                    f"got {shown(path)} with {entry.name!r} linking outside it"
                )
    elif not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise InputError(f"{where}: expected a file or a folder, got {shown(path)}")
    return resolved


class Uploads(Media):
    """The server's `Media`: paths inside --allow-dir only, no Python objects in parts."""

    objects = False

    def __init__(self, allow_dir: Path | None) -> None:
        super().__init__()
        self.allow_dir = allow_dir

    def path(self, path: str, where: str) -> str:
        return str(allowed_path(path, self.allow_dir, where))


def read_messages(model: OneLLM, request: ChatRequest, uploads: Uploads):
    """-> (system text or None, earlier (user, assistant) turns, prompt, {modality: raw})."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]  # no copies
    d = read_dialogue(model, messages, uploads)
    return d.system, d.history, d.prompt, d.inputs


def prepare(
    model: OneLLM,
    raws: Mapping[str, Any],
    prompt: str | None,
    history: Sequence[tuple[str, str]],
    system: str | None = None,
    context: int | None = None,
    max_tokens: int = 0,
) -> Prepared:
    """Raw inputs + conversation -> a checked `Conversation`: its text's length checked
    before tokenising, its length in tokens before its inputs are read (`context`: the
    model's, with `max_tokens` to generate), then the inputs preprocessed (the layout
    already checked, so a bad placeholder is this request's error, not its batch's)."""
    d = Dialogue(dict(raws), prompt, list(history), system)
    if d.prompt is None and not d.inputs:
        raise InputError("messages: expected text or an input in the last user message, got none")
    check_dialogue(model, d)
    segments = segments_of(model, d)
    n = len(prompt_ids(model, segments, list(d.inputs)))
    if context is not None:
        check_fits(n, context, max_tokens)
    inputs = {key: read(model, key, raw) for key, raw in d.inputs.items()}
    return Prepared(Conversation(inputs, segments, pixels_of(model, d.inputs)), n)


def read(model: OneLLM, key: str, raw: Any):
    """The modality's own preprocess; a reader's failure on a bad upload is this request's
    `InputError`, whatever the library under it raised."""
    try:
        return model.preprocess(raw, key)
    except InputError:
        raise
    except Exception as e:  # PIL, PyAV, soundfile, numpy each raise their own on bad bytes
        raise InputError(
            f"{key}: expected a readable {key} file, could not read the upload "
            f"({type(e).__name__}: {e})"
        ) from e
