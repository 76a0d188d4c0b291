"""JSONL manifests: one record per line, LLaVA's conversation format for instruction data.

    {"modality": "audio", "input": "clips/a.wav", "caption": "a dog barks"}
    {"modality": "image", "input": "img/1.png", "conversations": [
        {"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "a cat"}]}
    {"modality": "depth", "input": {"rgb": "a.png", "depth": "a_depth.png"}, "caption": "..."}
    {"modality": "image", "input": "coco/1.jpg", "captions": ["a cat on a bed", "a sleeping cat"]}
    {"inputs": {"image": "a.png", "audio": "a.wav"}, "conversations": [
        {"from": "human", "value": "<image> <audio> Does the sound match the picture?"}, ...]}

A record with several modalities (`inputs`) places each where its text names `<m>`, else
first, in the order given (onellm/modeling/layout.py), as chat does.

Relative inputs resolve against the manifest's folder. A bad record is an error naming its line.

A manifest of any size is read as an index: one pass keeps each wanted record's byte offset
and line number (12 bytes a record, numpy arrays), and record i is read and checked when it
is asked for. That a record's input file exists is checked then too, so that indexing a
million-file manifest costs no million stat calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onellm.errors import InputError


@dataclass
class Record:
    modality: str  # the first (or only) modality of the record
    input: Any  # a path, or {part: path} for paired inputs (depth/normal with their rgb)
    caption: str | None = None  # what training targets: 'caption', else the first of 'captions'
    captions: list[str] = field(default_factory=list)  # every reference evaluation scores against
    turns: list[tuple[str, str]] = field(default_factory=list)
    more: dict[str, Any] = field(default_factory=dict)  # the other modalities' inputs, in order

    @property
    def modalities(self) -> tuple[str, ...]:
        return (self.modality, *self.more)


class Manifest:
    """The records of a JSONL manifest whose modalities (a tuple) `keep` accepts (default:
    all), by position. Holds offsets, never the records; `manifest[i]` parses line i's."""

    def __init__(
        self, path: str | os.PathLike, keep: Callable[[tuple[str, ...]], bool] | None = None
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                f"manifest: expected a JSONL file, got {str(self.path)!r} (no such file)"
            )
        offsets, lines = [], []
        with open(self.path, "rb") as f:
            offset = 0
            for n, line in enumerate(f, start=1):
                if line.strip():
                    raw = _parse(line, self.where(n))
                    try:
                        wanted = keep is None or keep(_modalities(raw))
                    except InputError as e:  # e.g. a modality the model does not have
                        raise InputError(f"manifest {self.where(n)}: {e}") from e
                    if wanted:
                        offsets.append(offset)
                        lines.append(n)
                offset += len(line)
        if not offsets:
            wanted = "" if keep is None else " of the wanted modality"
            raise InputError(
                f"manifest: expected at least one record{wanted} in {str(self.path)!r}, got none"
            )
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lines = np.asarray(lines, dtype=np.int32)

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        with open(self.path, "rb") as f:  # one open per read: workers share no handle
            f.seek(int(self.offsets[i]))
            line = f.readline()
        where = self.where(int(self.lines[i]))
        return to_record(_parse(line, where), where, self.path.parent)

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Every record of a (small) manifest, checked: held-out sets for `onellm eval`."""
    return list(Manifest(path))


def _parse(line: bytes, where: str) -> dict[str, Any]:
    """One line -> its JSON object with the fields every record needs, checked."""
    try:
        raw = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise InputError(
            f"manifest {where}: expected a JSON object, got invalid JSON ({msg})"
        ) from e
    if not isinstance(raw, dict):
        raise InputError(f"manifest {where}: expected a JSON object, got {type(raw).__name__}")
    if "inputs" in raw:
        inputs = raw["inputs"]
        if not isinstance(inputs, dict) or not inputs or "modality" in raw or "input" in raw:
            raise InputError(
                f"manifest {where}: expected 'inputs' as a dict {{modality: input}} (and no "
                f"'modality'/'input' beside it), got {inputs!r:.80}"
            )
        for name, value in inputs.items():
            _check_input(value, where, name)
    else:
        if not isinstance(raw.get("modality"), str) or not raw["modality"]:
            raise InputError(
                f"manifest {where}: expected a string 'modality', got {raw.get('modality')!r}"
            )
        _check_input(raw.get("input"), where)
    fill_text(Record("", None), raw, where)  # its text is checked as it is indexed
    return raw


def _modalities(raw: dict[str, Any]) -> tuple[str, ...]:
    return tuple(raw["inputs"]) if "inputs" in raw else (raw["modality"],)


def _check_input(value: Any, where: str, name: str | None = None) -> None:
    """An input: a path, or a dict of paths (paired inputs such as rgb + depth)."""
    paired = (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items())
    )
    if not paired and (not isinstance(value, str) or not value):
        field = f"input for {name!r}" if name else "'input'"
        raise InputError(
            f"manifest {where}: expected a string {field} or a dict of them "
            f'({{"rgb": "a.png", "depth": "a_depth.png"}}), got {value!r}'
        )


def to_record(raw: dict[str, Any], where: str, root: Path) -> Record:
    """A parsed manifest object -> a `Record`, its input paths resolved against `root` and
    checked to exist."""

    def resolve(name: str) -> str:
        source = Path(name)
        source = source if source.is_absolute() else root / source
        if not source.exists():
            raise InputError(f"manifest {where}: input {str(source)!r} does not exist")
        return str(source)

    def resolved(value: Any) -> Any:
        return (
            {k: resolve(v) for k, v in value.items()} if isinstance(value, dict) else resolve(value)
        )

    given = raw["inputs"] if "inputs" in raw else {raw["modality"]: raw["input"]}
    (first, value), *rest = given.items()
    record = Record(modality=first, input=resolved(value), more={m: resolved(v) for m, v in rest})
    fill_text(record, raw, where)
    return record


def fill_text(record: Record, raw: dict[str, Any], where: str) -> None:
    """The record's caption(s) or conversation from `raw` (a manifest line or a shard's json).
    `captions` (a list: COCO's five per image) are the references evaluation scores against,
    `caption` beside them joining first; training targets `caption`, else the first."""
    if "conversations" in raw:
        record.turns = _turns(raw["conversations"], where)
        return
    given = raw.get("caption")
    if "captions" in raw:
        record.captions = _captions(raw["captions"], where)
        if isinstance(given, str) and given.strip():
            given = given.strip()
            record.captions = [given, *(c for c in record.captions if c != given)]
        record.caption = record.captions[0]
    elif isinstance(given, str) and given.strip():
        record.caption = given.strip()
        record.captions = [record.caption]
    else:
        raise InputError(
            f"manifest {where}: expected a non-empty 'caption' or 'conversations' (or "
            "'captions', a list), got neither"
        )


def _captions(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InputError(
            f"manifest {where}: expected 'captions' as a non-empty list of strings, "
            f"got {value!r:.80}"
        )
    for i, c in enumerate(value):
        if not isinstance(c, str) or not c.strip():
            raise InputError(
                f"manifest {where}: expected 'captions'[{i}] a non-empty string, got {c!r:.80}"
            )
    return [c.strip() for c in value]


def _turns(conv: object, where: str) -> list[tuple[str, str]]:
    if not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2:
        raise InputError(
            f"manifest {where}: expected 'conversations' as human/gpt pairs, got {conv!r:.80}"
        )
    turns = []
    for i in range(0, len(conv), 2):
        human, gpt = conv[i], conv[i + 1]
        ok = all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in (human, gpt))
        if not ok or human.get("from") != "human" or gpt.get("from") != "gpt":
            raise InputError(
                f"manifest {where}: turn {i // 2 + 1} must be a 'human' then a 'gpt' message"
            )
        # a placeholder the text names (LLaVA's <image>) is where that block goes
        # (onellm/modeling/layout.py)
        turns.append((human["value"].strip(), gpt["value"].strip()))
    return turns
