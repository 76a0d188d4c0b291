"""Held-out shapes-world scenes written as a benchmark's files: each modality's inputs as
the files its users have (its `write`: png, binary .ply, Ego4D-style CSV, NIfTI + mask,
16-bit depth PNG, ...) and one JSONL manifest in onellm's format, a caption record and a
conversation record (its question-answer pairs) per scene. What the lmms-eval tasks and
`onellm eval --data` read: `python -m onellm.lmms write-shapes RUN OUT`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onellm.data import shapes
from onellm.errors import InputError
from onellm.modeling.modality import Writes

# the modalities lmms-eval has no tasks for (onellm/lmms/tasks/)
SHIPPED = ("point", "imu", "fmri", "depth", "normal")


def write_held_out(
    model: Any,
    out: str | Path,
    modalities: Sequence[str] = SHIPPED,
    *,
    samples: int = 50,
    seed: int = 1,
) -> Path:
    """`samples` test-split scenes of each modality (the shapes world's draw `seed`; 1 is
    the default stage's held-out draw, its seed 0 + 1) -> OUT/<modality>/<i>.* and
    OUT/manifest.jsonl (paths relative to it). -> the manifest's path."""
    out = Path(out)
    lines = []
    for name in modalities:
        key = model.modality_key(name)
        mod = model.modalities[key]
        if not isinstance(mod, Writes):
            raise InputError(f"{name}: expected a modality that writes its files, got none")
        (out / key).mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(shapes.sample(key, samples, "test", seed, model=model)):
            files = mod.write(scene.input, out / key / f"{i:04d}")
            where = _relative(files, out)
            lines.append({"modality": key, "input": where, "caption": scene.caption})
            if scene.qa:
                turns = [
                    {"from": who, "value": text}
                    for q, a in scene.qa
                    for who, text in (("human", q), ("gpt", a))
                ]
                lines.append({"modality": key, "input": where, "conversations": turns})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _relative(files: Any, root: Path) -> Any:
    if isinstance(files, dict):
        return {k: str(Path(v).relative_to(root)) for k, v in files.items()}
    return str(Path(files).relative_to(root))
