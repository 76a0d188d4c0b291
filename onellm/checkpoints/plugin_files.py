"""A saved run's file plug-ins: a modality found as `type: path/file.py[:Class]` is copied
into RUN/plugins/ and the saved config names it relative to the run (`plugins/file.py`),
as transformers' `trust_remote_code` keeps a model's modeling files beside its weights, so
the run loads on another machine or after the original file moved. A plug-in named by its
registry name, entry point or importable module (`thermal`, `pkg.module:Class`) is kept as
named: that machine installs the package.

The copy is the file the modality's class was loaded from (the code that ran), so a file
plug-in must be self-contained (no imports of files beside it); a plug-in of several files
is a package. Loading a run executes its plugins/*.py, as loading the original path did.
"""

from __future__ import annotations

import filecmp
import inspect
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onellm.errors import CheckpointError

FOLDER = "plugins"


def is_file_type(kind: Any) -> bool:
    """Whether a modality `type` names a Python file (`path/file.py[:Class]`)."""
    return isinstance(kind, str) and kind.partition(":")[0].endswith(".py")


def keep_plugins(
    specs: Mapping[str, dict[str, Any]], classes: Mapping[str, type], out: Path
) -> dict[str, dict[str, Any]]:
    """`specs` ({modality: {type, **kwargs}}) with each file plug-in copied into
    `out`/plugins/ and its `type` made `plugins/<file>.py[:Class]`; `classes`: each
    modality's class (its source file is what is copied)."""
    kept, copied = {}, {}  # file name in plugins/ -> the file copied there
    for name, spec in specs.items():
        spec = dict(spec)
        kind = spec.get("type")
        if is_file_type(kind):
            _, colon, attr = kind.partition(":")
            source = Path(inspect.getfile(classes[name])).resolve()
            target = out / FOLDER / source.name
            other = copied.setdefault(source.name, source)
            if other != source and not filecmp.cmp(source, other, shallow=False):
                raise CheckpointError(
                    f"modalities.{name}: plug-ins {other} and {source} would both be saved "
                    f"as {target}; give one of the files another name"
                )
            if target.resolve() != source:  # a run saved again in place keeps its copy
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            spec["type"] = f"{FOLDER}/{source.name}{colon}{attr}"
        kept[name] = spec
    return kept
