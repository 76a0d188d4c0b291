"""JSONL manifests: one record per line, LLaVA's conversation format for instruction data.

    {"modality": "audio", "input": "clips/a.wav", "caption": "a dog barks"}
    {"modality": "image", "input": "img/1.png", "conversations": [
        {"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "a cat"}]}
Relative inputs resolve against the manifest's folder. A bad record is an error naming its line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from onellm.errors import InputError


@dataclass
class Record:
    modality: str
    input: str
    caption: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Parse and validate every line of a JSONL manifest."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest: expected a JSONL file, got {str(p)!r} (no such file)")
    records = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"manifest {where}: expected a JSON object, got invalid JSON ({e.msg})"
            ) from e
        if not isinstance(raw, dict):
            raise InputError(f"manifest {where}: expected a JSON object, got {type(raw).__name__}")
        for key in ("modality", "input"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise InputError(
                    f"manifest {where}: expected a string '{key}', got {raw.get(key)!r}"
                )
        source = Path(raw["input"])
        source = source if source.is_absolute() else p.parent / source
        if not source.exists():
            raise InputError(f"manifest {where}: input {str(source)!r} does not exist")
        record = Record(modality=raw["modality"], input=str(source))
        if "conversations" in raw:
            record.turns = _turns(raw["conversations"], where)
        elif isinstance(raw.get("caption"), str) and raw["caption"].strip():
            record.caption = raw["caption"].strip()
        else:
            raise InputError(
                f"manifest {where}: expected a non-empty 'caption' or 'conversations', got neither"
            )
        records.append(record)
    if not records:
        raise InputError(f"manifest: expected at least one record in {str(p)!r}, got none")
    return records


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
        # the modality placeholder LLaVA writes (<image>) is the block; it goes first anyway
        turns.append((human["value"].replace("<image>", "").strip(), gpt["value"].strip()))
    return turns
