"""From a request's messages (or the UI's uploads) to one `Conversation`, checked.

Uploads are decoded by the modality's own reader: their bytes go to a temporary file with
the format's suffix and `model.preprocess` reads it, exactly as it reads a user's file;
the file is gone before the request is queued. A path is read only inside the folder the
operator allowed (`--allow-dir`), after resolving links and `..`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onellm.errors import InputError
from onellm.inference.chat import Conversation, pixels_of, prompt_ids
from onellm.modeling.modality import TakesUpload
from onellm.modeling.template import render_prompt
from onellm.serve.media_types import SUFFIXES
from onellm.serve.schemas import PART_TYPES, ChatRequest, ContentPart, FileData

if TYPE_CHECKING:
    from onellm.model import OneLLM

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.S)


class Forbidden(InputError):
    """A request named a server path it may not read (HTTP 403)."""


@dataclass
class Prepared:
    """A checked request: its conversation and its prompt's length in tokens."""

    conversation: Conversation
    prompt_tokens: int


def decode_base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: expected base64 data, got invalid base64 ({e})") from e


def allowed_path(path: str, allow_dir: Path | None, where: str) -> Path:
    """`path` resolved, if it lies inside `allow_dir`; else `Forbidden`."""
    if allow_dir is None:
        raise Forbidden(
            f"{where}: expected the file's bytes (base64), got a server path; this server reads "
            "no files (the operator can allow a folder with --allow-dir)"
        )
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(allow_dir.resolve()):
        raise Forbidden(f"{where}: expected a path inside the allowed folder, got {path!r}")
    return resolved


class Uploads:
    """Writes a request's uploads to one temporary folder (removed on `close`)."""

    def __init__(self, allow_dir: Path | None) -> None:
        self.allow_dir = allow_dir
        self.tmp = tempfile.TemporaryDirectory(prefix="onellm-upload-")
        self.count = 0

    def close(self) -> None:
        self.tmp.cleanup()

    def hide(self, message: str) -> str:
        """An error message without the temporary folder's path (the client never saw it)."""
        return message.replace(self.tmp.name, "<upload>")

    def write(self, data: bytes, suffix: str) -> str:
        self.count += 1
        path = Path(self.tmp.name) / f"{self.count}{suffix}"
        path.write_bytes(data)
        return str(path)

    def file(self, f: FileData, where: str) -> str:
        """A `{data, format}` or `{path}` part -> a path the modality reads."""
        if (f.data is None) == (f.path is None):
            raise InputError(
                f"{where}: expected one of 'data' (base64) or 'path', got "
                f"{'both' if f.data is not None else 'neither'}"
            )
        if f.path is not None:
            return str(allowed_path(f.path, self.allow_dir, where))
        if not f.format or not re.fullmatch(r"[A-Za-z0-9]{1,8}", f.format):
            raise InputError(
                f"{where}: expected 'format', the file's suffix (png, wav, mp4, "
                f"npy, ...), got {f.format!r}"
            )
        return self.write(decode_base64(f.data, where), "." + f.format.lower())

    def url(self, url: str, where: str) -> str:
        """A data: URL (or a file:// URL / path inside --allow-dir) -> a path."""
        m = DATA_URL.match(url)
        if m:
            mime = (m["mime"] or "").lower()
            suffix = SUFFIXES.get(mime)
            if not suffix:
                raise InputError(
                    f"{where}: expected a data: URL with a media type (image/png, "
                    f"video/mp4, ...), got {mime or 'none'}"
                )
            return self.write(decode_base64(m["data"], where), suffix)
        if url.startswith(("http://", "https://")):
            raise InputError(
                f"{where}: expected a data: URL, got an http URL (this server fetches nothing)"
            )
        path = url.removeprefix("file://")
        return str(allowed_path(path, self.allow_dir, where))

    def part(self, model: OneLLM, p: ContentPart, where: str) -> tuple[str, Any]:
        """A media part -> (modality key, raw input as its reader takes it)."""
        if p.type == "image_url" and p.image_url is not None:
            return taking(model, "image", where), self.url(p.image_url.url, where)
        if p.type == "video_url" and p.video_url is not None:
            return taking(model, "video", where), self.url(p.video_url.url, where)
        if p.type == "input_audio" and p.input_audio is not None:
            f = FileData(data=p.input_audio.data, format=p.input_audio.format)
            return taking(model, "audio", where), self.file(f, where)
        if p.type == "onellm_input" and p.onellm_input is not None:
            x = p.onellm_input
            key = model.modality_key(x.modality)
            if x.parts is not None:
                return key, {n: self.file(f, f"{where}.parts.{n}") for n, f in x.parts.items()}
            return key, self.file(x, where)
        raise InputError(f"{where}: expected a {p.type!r} field beside type {p.type!r}")


def taking(model: OneLLM, upload: str, where: str) -> str:
    """The key of the model's first modality that takes `upload` files (OpenAI's part
    types carry an image, a video or audio, not a modality)."""
    for key, mod in model.modalities.items():
        if isinstance(mod, TakesUpload) and mod.upload == upload:
            return key
    raise InputError(
        f"{where}: expected a part this model reads, got {upload} but none of its "
        f"modalities ({', '.join(model.modalities)}) takes {upload} files; name one "
        "in an onellm_input part"
    )


def read_messages(model: OneLLM, request: ChatRequest, uploads: Uploads):
    """-> (system text or None, earlier (user, assistant) turns, prompt, {modality: raw})."""
    system, texts, roles, raws = None, [], [], {}
    for i, msg in enumerate(request.messages):
        where = f"messages[{i}]"
        parts = (
            [ContentPart(type="text", text=msg.content)]
            if isinstance(msg.content, str)
            else (msg.content or [])
        )
        text = []
        for j, p in enumerate(parts):
            at = f"{where}.content[{j}]"
            if p.type not in PART_TYPES:
                raise InputError(
                    f"{at}.type: expected one of {', '.join(PART_TYPES)}, got {p.type!r}"
                )
            if p.type == "text":
                text.append(p.text or "")
                continue
            if msg.role != "user":
                raise InputError(
                    f"{at}: expected media in user messages only, got it in a {msg.role} message"
                )
            key, raw = uploads.part(model, p, at)
            if key in raws:
                raise InputError(f"{at}: expected one {key} input in a conversation, got two")
            raws[key] = raw
        joined = "\n".join(t for t in text if t)
        if msg.role != "assistant":
            check_typed(model, joined, where)
        if msg.role == "system":
            if i != 0:
                raise InputError(f"{where}: expected the system message first, got it at {i}")
            system = joined
            continue
        texts.append(joined)
        roles.append(msg.role)
    if (
        not roles
        or roles[-1] != "user"
        or any(r != ("user", "assistant")[k % 2] for k, r in enumerate(roles))
    ):
        raise InputError(
            f"messages: expected user and assistant turns in turn, ending with a "
            f"user message, got roles {roles}"
        )
    history = list(zip(texts[:-1:2], texts[1::2], strict=True))
    return system, history, texts[-1] or None, raws


def check_typed(model: OneLLM, text: str, where: str) -> None:
    """An output token (`<seg>`, `<gen>`) is the model's to emit, not the user's to type."""
    for task in model.outputs.token_ids:
        if f"<{task}>" in text:
            raise InputError(
                f"{where}: <{task}> is the token the model emits for its {task} "
                "output; it cannot be typed in a message"
            )


def prepare(
    model: OneLLM,
    raws: Mapping[str, Any],
    prompt: str | None,
    history: Sequence[tuple[str, str]],
    system: str | None = None,
    context: int | None = None,
    max_tokens: int = 0,
) -> Prepared:
    """Raw inputs + conversation -> a checked `Conversation` (inputs preprocessed; the
    layout already checked, so a bad placeholder is this request's error, not its batch's)."""
    if prompt is None and not raws:
        raise InputError("messages: expected text or an input in the last user message, got none")
    chat_cfg = model.config.chat
    if system is not None:
        chat_cfg = dataclasses.replace(chat_cfg, system=system)
    segments = render_prompt(chat_cfg, prompt, list(history))
    inputs = {key: read(model, key, raw) for key, raw in raws.items()}
    n = len(prompt_ids(model, segments, list(inputs)))
    if context is not None and n + max_tokens > context:
        raise InputError(
            f"max_tokens: the prompt has {n} tokens and the model's context "
            f"{context}, so expected at most {context - n}, got {max_tokens}"
        )
    conv = Conversation(inputs, segments, pixels_of(model, dict(raws)) if raws else None)
    return Prepared(conv, n)


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
