"""How a message part's file reference becomes what a modality's reader takes.

`Media` is the library's policy, used by `model.chat(messages=...)`: a path (or a file://
URL) is a local file the user names, read where it lies; base64 data (a data: URL, an
`input_audio` or `onellm_input` part) is written to one temporary folder, removed on
`close`, with the format's suffix so the modality reads it as it reads a user's file.
URLs are never fetched (nothing is downloaded at run time). The server's policy
(onellm/serve/inputs.py `Uploads`) is this one with `path` narrowed to --allow-dir and no
Python objects in parts.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onellm.errors import InputError
from onellm.serve.media_types import SUFFIXES  # a plain table (no server library behind it)

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)$", re.S)
FILE_KEYS = {"data", "format", "path"}


def shown(path: str, limit: int = 120) -> str:
    """A path as an error message quotes it: repr'd, cut if long (a path may be anything)."""
    return repr(path) if len(path) <= limit else repr(path[:limit]) + f"... ({len(path):,} chars)"


def decode_base64(data: Any, where: str) -> bytes:
    if not isinstance(data, str):
        raise InputError(f"{where}: expected base64 data (a string), got {type(data).__name__}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: expected base64 data, got invalid base64 ({e})") from e


def check_path(path: str, where: str) -> None:
    """A path the file system can be asked about: no NUL byte, no lone surrogate (either
    makes `os.stat` and `Path.resolve` raise a ValueError)."""
    if "\x00" in path:
        raise InputError(f"{where}: expected a file path, got one with a NUL byte: {shown(path)}")
    try:
        os.fsencode(path)
    except UnicodeEncodeError as e:
        raise InputError(
            f"{where}: expected a file path, got one with a lone surrogate "
            f"{path[e.start]!r} at character {e.start}"
        ) from e


def stat_path(path: str, where: str) -> os.stat_result:
    """`os.stat(path)`, its failures (NUL byte, name too long, no such file, no access) as
    the request's `InputError` naming the field."""
    check_path(path, where)
    try:
        return os.stat(path)
    except FileNotFoundError as e:
        raise InputError(f"{where}: expected an existing file, got {shown(path)} (none)") from e
    except OSError as e:
        raise InputError(
            f"{where}: expected a readable file, got {shown(path)} ({e.strerror})"
        ) from e


class Media:
    """The library's reading of file references (see the module docstring). Use as a
    context manager, or call `close` once the inputs are preprocessed."""

    objects = True  # whether a part may carry a Python object ({"type": "image", "image": pil})

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.count = 0

    def __enter__(self) -> Media:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def hide(self, message: str) -> str:
        """An error message without the temporary folder's path (the caller never saw it)."""
        return message if self._tmp is None else message.replace(self._tmp.name, "<upload>")

    def path(self, path: str, where: str) -> str:
        """A path the user named -> the path its modality reads (checked to exist)."""
        stat_path(path, where)
        return path

    def write(self, data: bytes, suffix: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="onellm-upload-")
        self.count += 1
        path = Path(self._tmp.name) / f"{self.count}{suffix}"
        path.write_bytes(data)
        return str(path)

    def url(self, url: Any, where: str) -> str:
        """A data: URL (or a path, or a file:// URL) -> a path the modality reads."""
        if not isinstance(url, str):
            raise InputError(f"{where}: expected a URL string, got {type(url).__name__}")
        m = DATA_URL.match(url)
        if m:
            mime = (m["mime"] or "").lower()
            suffix = SUFFIXES.get(mime)
            if not suffix:
                raise InputError(
                    f"{where}: expected a data: URL with a media type onellm reads (image/png, "
                    f"video/mp4, audio/wav, ...), got {mime or 'none'}"
                )
            return self.write(decode_base64(m["data"], where), suffix)
        if url[:5].lower() == "data:":
            raise InputError(
                f"{where}: expected a base64 data: URL (data:<media type>;base64,<data>), got "
                f"{url[:40]!r}"
            )
        if url.startswith(("http://", "https://")):
            raise InputError(
                f"{where}: expected a data: URL or a file, got an http URL (onellm fetches "
                "nothing; download the file and give its bytes or path)"
            )
        return self.path(url.removeprefix("file://"), where)

    def file(self, f: Any, where: str, extra: frozenset[str] = frozenset()) -> str:
        """A `{"data": base64, "format": suffix}` or `{"path": ...}` object -> a path."""
        if not isinstance(f, Mapping):
            raise InputError(
                f"{where}: expected an object with 'data' and 'format', or 'path', got "
                f"{type(f).__name__}"
            )
        if unknown := sorted(set(f) - FILE_KEYS - extra):
            allowed = ", ".join(sorted(FILE_KEYS | extra))
            raise InputError(f"{where}: expected only the keys {allowed}, got {unknown}")
        data, path = f.get("data"), f.get("path")
        if (data is None) == (path is None):
            raise InputError(
                f"{where}: expected one of 'data' (base64) or 'path', got "
                f"{'both' if data is not None else 'neither'}"
            )
        if path is not None:
            if not isinstance(path, str):
                raise InputError(f"{where}.path: expected a string, got {type(path).__name__}")
            return self.path(path, f"{where}.path")
        fmt = f.get("format")
        if not isinstance(fmt, str) or not re.fullmatch(r"[A-Za-z0-9]{1,8}", fmt):
            raise InputError(
                f"{where}.format: expected the file's suffix (png, wav, mp4, npy, ...), got "
                f"{fmt!r}"[:200]
            )
        return self.write(decode_base64(data, f"{where}.data"), "." + fmt.lower())
