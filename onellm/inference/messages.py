"""One message format for `model.chat(messages=...)`, `onellm serve` and the evaluation:
OpenAI's chat messages, `{"role": "system" | "user" | "assistant", "content": str | [part]}`
("developer" is read as "system", as OpenAI's newer clients send it). Parts:

    {"type": "text", "text": "..."}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}   (or a path)
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}
    {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}   (vLLM's)
    {"type": "onellm_input", "onellm_input": {"modality": "point", "data": "<base64>",
        "format": "npy"}}   (or "path": ..., or "parts": {"rgb": {...}, "depth": {...}})

In the library (not over HTTP), a part may also carry what a Python user has in hand,
typed by the modality's name as transformers' processors take `{"type": "image",
"image": pil}`: `{"type": "image", "image": PIL | array | tensor | path}`, `{"type":
"depth", "depth": {"rgb": ..., "depth": ...}}`: any raw input `model.chat(inputs=...)`
takes. Media go in user messages, one input per modality in a conversation, placed at
its `<m>` placeholder in the text, else first; user and assistant turns alternate and
the last is the user's. How a file reference is read is the `Media` policy's
(onellm/inference/media.py: the library's; onellm/serve/inputs.py: the server's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onellm.errors import InputError
from onellm.inference.context import check_chars
from onellm.inference.media import Media
from onellm.modeling.modality import TakesUpload
from onellm.modeling.template import Turn

if TYPE_CHECKING:
    from onellm.model import OneLLM

PART_TYPES = ("text", "image_url", "input_audio", "video_url", "onellm_input")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UPLOADS = {"image_url": "image", "video_url": "video", "input_audio": "audio"}


@dataclass
class Dialogue:
    """A conversation read from messages: what `chat` and the server's `prepare` take."""

    inputs: dict[str, Any] = field(default_factory=dict)  # modality key -> raw input
    prompt: str | None = None  # the last user message's text; None: caption the inputs
    history: list[Turn] = field(default_factory=list)  # earlier (user, assistant) turns
    system: str | None = None  # a system message (in place of the config's)


def check_text(text: str, where: str) -> None:
    """Text the tokenizer can read: no lone UTF-16 surrogate (JSON's "\\ud800" decodes to
    one, and no UTF-8 can spell it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{where}: expected Unicode text, got a lone surrogate {text[e.start]!r} at "
            f"character {e.start}"
        ) from e


def check_typed(model: OneLLM, text: str, where: str) -> None:
    """An output token (`<seg>`, `<gen>`) is the model's to emit, not the user's to type."""
    for task in model.outputs.token_ids:
        if f"<{task}>" in text:
            raise InputError(
                f"{where}: <{task}> is the token the model emits for its {task} "
                "output; it cannot be typed in a message"
            )


def check_dialogue(model: OneLLM, d: Dialogue) -> None:
    """A dialogue given as prompt, history and system (`chat(prompt=...)`, the UI): its
    text checked as messages' text is, its length before any tokenising."""
    texts = {"system": d.system or "", "prompt": d.prompt or ""}
    for k, turn in enumerate(d.history):
        texts.update({f"history[{k}][{j}]": t for j, t in enumerate(turn)})
    for where, text in texts.items():
        if not isinstance(text, str):
            raise InputError(f"{where}: expected a string, got {type(text).__name__}")
    check_chars(model, texts.values(), "text")
    for where, text in texts.items():
        check_text(text, where)


def read_messages(model: OneLLM, messages: Any, media: Media, where: str = "messages") -> Dialogue:
    """OpenAI-style `messages` -> a `Dialogue`, every field checked (an `InputError` names
    it: `messages[2].content[0].image_url.url: ...`). Files are read through `media`,
    whose temporary files live until it is closed. `where`: how errors name the list (a
    batch's conversations are `messages[k]`)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError(
            f"{where}: expected a list of {{'role': ..., 'content': ...}} messages, got "
            f"{type(messages).__name__}"
        )
    if not messages:
        raise InputError(f"{where}: expected at least one message, got an empty list")
    system, texts, roles, raws = None, [], [], {}
    for i, msg in enumerate(messages):
        at_msg = f"{where}[{i}]"
        role, parts = role_and_parts(msg, at_msg)
        text = []
        for at, p in parts:
            kind = part_type(model, p, media, at)
            if kind == "text":
                if not isinstance(p.get("text"), str):
                    raise InputError(
                        f"{at}.text: expected a string, got {type(p.get('text')).__name__}"
                    )
                text.append(p["text"])
                continue
            if role != "user":
                raise InputError(f"{at}: expected media in user messages only, got it in {role}")
            key, raw = read_part(model, p, kind, media, at)
            if key in raws:
                raise InputError(f"{at}: expected one {key} input in a conversation, got two")
            raws[key] = raw
        joined = "\n".join(t for t in text if t)
        check_text(joined, f"{at_msg}.content")
        if role != "assistant":
            check_typed(model, joined, at_msg)
        if role == "system":
            if i != 0:
                raise InputError(f"{at_msg}: expected the system message first, got it at {i}")
            system = joined
            continue
        texts.append(joined)
        roles.append(role)
    check_chars(model, [system or "", *texts], where)  # before any tokenising
    if (
        not roles
        or roles[-1] != "user"
        or any(r != ("user", "assistant")[k % 2] for k, r in enumerate(roles))
    ):
        raise InputError(
            f"{where}: expected user and assistant turns in turn, ending with a user "
            f"message, got roles {roles}"
        )
    history = list(zip(texts[:-1:2], texts[1::2], strict=True))
    prompt = texts[-1] if texts[-1].strip() else None
    if prompt is None and not raws:
        raise InputError(f"{where}: expected text or an input in the last user message, got none")
    return Dialogue(raws, prompt, history, system)


def role_and_parts(msg: Any, where: str) -> tuple[str, list[tuple[str, Any]]]:
    """A message -> its role (system/user/assistant) and its (where, part) pairs."""
    if not isinstance(msg, Mapping):
        raise InputError(
            f"{where}: expected an object with 'role' and 'content', got {type(msg).__name__}"
        )
    role = msg.get("role")
    if role not in ROLES:
        raise InputError(
            f"{where}.role: expected one of {', '.join(ROLES)}, got {str(role)[:50]!r}"
        )
    content = msg.get("content")
    if content is None or isinstance(content, str):
        return ROLES[role], [(f"{where}.content", {"type": "text", "text": content or ""})]
    if isinstance(content, (Mapping, bytes)) or not isinstance(content, Sequence):
        raise InputError(
            f"{where}.content: expected a string or a list of content parts "
            f"([{{'type': 'text', 'text': ...}}, ...]), got {type(content).__name__}"
        )
    return ROLES[role], [(f"{where}.content[{j}]", p) for j, p in enumerate(content)]


def part_type(model: OneLLM, p: Any, media: Media, at: str) -> str:
    """A part's type: one of `PART_TYPES`, or (in the library) a modality's name."""
    kind = p.get("type") if isinstance(p, Mapping) else None
    if kind in PART_TYPES or (media.objects and isinstance(kind, str) and kind in model.names):
        return kind
    if not isinstance(p, Mapping):
        raise InputError(
            f"{at}: expected a content part ({{'type': 'text', 'text': ...}}), got "
            f"{type(p).__name__}"
        )
    also = f", or a modality of this model ({', '.join(model.names)})" if media.objects else ""
    raise InputError(
        f"{at}.type: expected one of {', '.join(PART_TYPES)}{also}, got {str(kind)[:50]!r}"
    )


def read_part(model: OneLLM, p: Mapping, kind: str, media: Media, at: str) -> tuple[str, Any]:
    """A media part -> (modality key, raw input as its reader takes it)."""
    value = p.get(kind)
    if value is None:
        raise InputError(f"{at}: expected a {kind!r} field beside type {kind!r}, got none")
    if kind in ("image_url", "video_url"):
        url = value.get("url") if isinstance(value, Mapping) else value  # {"url": ...} or a URL
        return taking(model, UPLOADS[kind], at), media.url(url, f"{at}.{kind}.url")
    if kind == "input_audio":
        f = {"format": "wav", **value} if isinstance(value, Mapping) else value
        return taking(model, "audio", at), media.file(f, f"{at}.input_audio")
    if kind == "onellm_input":
        if not isinstance(value, Mapping):
            raise InputError(
                f"{at}.onellm_input: expected an object with 'modality' and the file, got "
                f"{type(value).__name__}"
            )
        key = modality_of(model, value.get("modality"), f"{at}.onellm_input.modality")
        parts = value.get("parts")
        if parts is None:
            return key, media.file(value, f"{at}.onellm_input", frozenset({"modality"}))
        if not isinstance(parts, Mapping) or set(value) - {"modality", "parts"}:
            raise InputError(
                f"{at}.onellm_input: expected 'modality' and 'parts' (an object of files by "
                f"part name), got keys {sorted(value)}"
            )
        at = f"{at}.onellm_input.parts"
        return key, {n: media.file(f, f"{at}.{field_name(n)}") for n, f in parts.items()}
    # a part typed by the modality's name carries a raw input (the library only)
    key = model.modality_key(kind)
    if isinstance(value, (str, os.PathLike)):
        return key, media.path(str(value), f"{at}.{kind}")
    return key, value


def field_name(name: Any) -> str:
    """A client's key as an error message names it (escaped unless a plain name)."""
    return name if isinstance(name, str) and name.isidentifier() else repr(name)[:50]


def modality_of(model: OneLLM, name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise InputError(f"{where}: expected a modality's name, got {type(name).__name__}")
    try:
        return model.modality_key(name)
    except InputError as e:
        raise InputError(f"{where}: {e}") from e


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


def one_turn(inputs: Mapping[str, Any], text: str | None = None) -> list[dict[str, Any]]:
    """A conversation of one user message asking `text` (None: a caption) about `inputs`
    ({modality: raw}), in the message format: what the evaluation asks."""
    content: list[dict[str, Any]] = [{"type": m, m: raw} for m, raw in inputs.items()]
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def conversations(messages: Any) -> tuple[list[Any], bool]:
    """`messages` as a batch: one conversation (a list of messages) or a list of them ->
    (the conversations, whether a batch was given)."""
    batched = (
        isinstance(messages, Sequence)
        and not isinstance(messages, (str, bytes))
        and len(messages) > 0
        and all(
            isinstance(m, Sequence) and not isinstance(m, (str, bytes, Mapping)) for m in messages
        )
    )
    return (list(messages), True) if batched else ([messages], False)
