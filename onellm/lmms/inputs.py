"""lmms-eval's visuals and chat messages -> onellm's message format (onellm/inference/messages.py).

What lmms-eval hands a model, and what each becomes:

    PIL.Image                                   -> image
    "clip.mp4" (a path; typed by its extension
      as lmms-eval types it: ConfigurableMessagesTask._IMAGE_EXTS / _AUDIO_EXTS)
                                                -> image, audio, else video
    {"array": ..., "sampling_rate": 16000, ...} -> audio (a HF datasets Audio value), written
                                                   to a temporary WAV at its own rate so the
                                                   audio modality's reader resamples it
    {"type": "point", "point": "a.ply"}         -> that modality: onellm's own content part,
                                                   what the shipped tasks' doc_to_visual gives

Anything else is an `InputError` naming the task, the visual's type and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from lmms_eval.api.task import ConfigurableMessagesTask
from PIL import Image

from onellm.errors import InputError

EXPECTED = (
    "a PIL image, a media file path, an audio dict {'array', 'sampling_rate'}, or onellm's "
    "part {'type': <modality>, <modality>: <input>}"
)


class Visuals:
    """Turns one task's visuals into `{modality: raw}`; audio arrays go to WAV files in
    `folder` (a temporary folder the caller owns until the model has read them)."""

    def __init__(self, model: Any, task: str, folder: str | os.PathLike) -> None:
        self.model, self.task, self.folder = model, task, Path(folder)
        self.written = 0

    def inputs(self, visuals: Any) -> dict[str, Any]:
        """A request's visuals (None, one, or a list) -> {modality key: raw}, one per modality."""
        if visuals is None:
            return {}
        many = isinstance(visuals, Sequence) and not isinstance(visuals, (str, bytes))
        out: dict[str, Any] = {}
        for v in visuals if many else [visuals]:
            modality, raw = self.one(v)
            key = self.key(modality, v)
            if key in out:
                raise InputError(
                    f"{self.task}: expected one {key} input per request (onellm places one "
                    f"input of each modality in a conversation), got several"
                )
            out[key] = raw
        return out

    def one(self, v: Any) -> tuple[str, Any]:
        """One visual -> (modality name, raw input the modality's preprocess reads)."""
        if isinstance(v, Image.Image):
            return "image", v
        if isinstance(v, (str, os.PathLike)):
            return kind_of_path(str(v)), str(v)
        if isinstance(v, Mapping):
            kind = v.get("type")
            if isinstance(kind, str) and kind in v:  # onellm's own part
                return kind, v[kind]
            if "array" in v and "sampling_rate" in v:
                return "audio", self.wav(v)
            if isinstance(v.get("path"), str) and v.get("bytes") is None:  # a path-only value
                return kind_of_path(v["path"]), v["path"]
            got = f"a dict with keys {sorted(map(str, v))}"
        else:
            got = type(v).__name__
        raise InputError(f"{self.task}: expected a visual as {EXPECTED}; got {got}")

    def key(self, modality: str, v: Any) -> str:
        if modality not in self.model.names:
            raise InputError(
                f"{self.task}: a {modality} visual ({type(v).__name__}), but this model has no "
                f"{modality} modality (it has: {', '.join(sorted(self.model.names))})"
            )
        return self.model.modality_key(modality)

    def wav(self, v: Mapping[str, Any]) -> str:
        """An audio array at its own rate -> a float WAV file the audio reader resamples."""
        wave = np.asarray(v["array"], dtype=np.float32)
        path = self.folder / f"audio{self.written}.wav"
        self.written += 1
        soundfile.write(path, wave.T if wave.ndim == 2 else wave, int(v["sampling_rate"]), "FLOAT")
        return str(path)

    def messages(self, raw_messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """lmms-eval's chat messages (`doc_to_messages`: {"role", "content": [{"type":
        "text"|"image"|"video"|"audio", "text"|"url": ...}]}) -> onellm's messages."""
        out = []
        for msg in raw_messages:
            content = msg.get("content")
            if isinstance(content, str):
                out.append({"role": msg.get("role"), "content": content})
                continue
            parts = []
            for part in content or []:
                if part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text")})
                    continue
                media = part.get("url", part.get(part.get("type")))
                modality, raw = self.one(media)
                key = self.key(modality, media)
                parts.append({"type": key, key: raw})
            out.append({"role": msg.get("role"), "content": parts})
        return out


def kind_of_path(path: str) -> str:
    """A path's modality as lmms-eval's chat tasks type a path: by its extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext in ConfigurableMessagesTask._IMAGE_EXTS:
        return "image"
    if ext in ConfigurableMessagesTask._AUDIO_EXTS and ext != ".webm":  # webm: mostly video
        return "audio"
    return "video"
