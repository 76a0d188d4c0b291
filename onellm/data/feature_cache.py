"""Frozen-feature cache: the universal encoder's outputs, computed once, read on every pass.

In the alignment stages nothing before the universal encoder trains for image, video, depth
and normal (their tokenizers are CLIP's own frozen patch embedding), so CLIP computes the
same features for an input on every pass and in every later stage that replays it. With
`feature_cache: DIR` in a stage (or `onellm cache-features STAGE.yaml`), each source whose
inputs reach the encoder unchanged is encoded once into safetensors shards

    DIR/<source>-<fingerprint>/features-00000.safetensors   {"features": (rows, S+1, W)}

and its examples carry those rows instead of the input. The fingerprint covers the encoder's
and the modality tokenizer's weights, the modality's settings and the data (the manifest's or
shards' size and modification time; not the media files they name), so a later stage
with the same frozen encoder and data reuses the folder, and anything else builds its own.
A source whose inputs change between passes (an augmentation such as `zoom`) or whose
tokenizer or encoder trains reads its inputs as before, and the stage says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from onellm.data.shards import Shards
from onellm.data.sources import modality_settings
from onellm.errors import CheckpointError, ConfigError
from onellm.modeling.devices import autocast, resolve_device
from onellm.training.freezing import apply_trainable
from onellm.training.prepare import prepare_model, stage_sources
from onellm.training.task import Task
from onellm.training.text_tasks import TextTask

ROWS = 1024  # examples per shard file
OPEN_FILES = 16  # shard files a process keeps open
DONE = "done.json"  # written last: a folder without it is an interrupted build


def why_not(model: Any, source: Any) -> str | None:
    """Why `source` cannot read cached features (None: it can)."""
    task = source.task
    if source.cfg.zoom is not None:
        return "zoom changes the input on every pass (an augmentation)"
    if not (isinstance(task, TextTask) and task.to_llm and source.modality is not None):
        return f"task {task.name} does not feed a modality input to the LLM"
    if type(task).example is not Task.example:
        return f"task {task.name} makes its own examples"
    parts = {
        "tokenizers." + source.modality: model.tokenizers[source.modality],
        "encoder": model.encoder,
    }
    for name, part in parts.items():
        if any(p.requires_grad for p in part.parameters()):
            return f"{name} trains in this stage, so its features change"
    return None


def fingerprint(model: Any, source: Any, precision: str = "fp32") -> str:
    """A hash of everything the cached features depend on."""
    h = hashlib.sha256()
    mod = model.modalities[source.modality]
    settings = modality_settings(mod)
    data: tuple = (source.cfg.data, source.cfg.pool)
    if source.records is not None:  # the manifest or shard files as they are now
        records = source.records
        files = records.paths if isinstance(records, Shards) else [str(records.path)]
        data = (
            source.cfg.data,
            len(source.records),
            [(f, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]],
        )
    h.update(
        repr(
            (type(mod).__name__, settings, data, source.seed, str(model.dtype), precision)
        ).encode()
    )
    for part in (model.tokenizers[source.modality], model.encoder):
        for name, t in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """Cached features by example index: `cache[i]` -> (1, S+1, W), read from its shard."""

    def __init__(self, folder: Path) -> None:
        try:
            meta = json.loads((folder / DONE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"feature cache: expected a complete cache in {folder} "
                f"(its {DONE}), got {e}; build it with onellm cache-features"
            ) from e
        self.folder, self.size, self.rows = folder, meta["size"], meta["rows"]
        self._open: dict[int, Any] = {}  # shard -> safe_open handle (mmapped)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.size:
            raise IndexError(i)
        shard, k = divmod(i, self.rows)
        if shard not in self._open:
            path = self.folder / f"features-{shard:05d}.safetensors"
            try:
                self._open[shard] = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"feature cache: cannot read {path}: {e}") from e
            if len(self._open) > OPEN_FILES:  # the oldest handle goes: bounded descriptors
                del self._open[next(iter(self._open))]
        return self._open[shard].get_slice("features")[k : k + 1]

    def __getstate__(self) -> dict[str, Any]:  # workers open their own handles
        return {**self.__dict__, "_open": {}}


class _Inputs(Dataset):
    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.size

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.source.scene(i).input[0]


@torch.no_grad()
def build(
    model: Any,
    source: Any,
    folder: Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    precision: str = "fp32",
    quiet: bool = False,
) -> FeatureCache:
    """Encode every example of `source` into `folder` (kept if already complete)."""
    if (folder / DONE).is_file():
        return FeatureCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = source.modality
    loader = DataLoader(_Inputs(source), batch_size=batch_size, num_workers=workers)
    rows: list[torch.Tensor] = []
    shard, was = 0, model.training
    model.eval()
    try:
        for x in tqdm(loader, desc=f"features {key}", unit="batch", disable=quiet):
            with autocast(model.device, precision):  # as the uncached stage runs CLIP
                rows += model.features(x.to(model.device, model.dtype), key).cpu().unbind(0)
            while len(rows) >= ROWS:
                _save(folder, shard, rows[:ROWS])
                rows, shard = rows[ROWS:], shard + 1
        if rows:
            _save(folder, shard, rows)
    finally:
        model.train(was)
    (folder / DONE).write_text(
        json.dumps({"size": source.size, "rows": ROWS, "modality": key, "data": source.cfg.data})
    )
    return FeatureCache(folder)


def _save(folder: Path, shard: int, rows: list[torch.Tensor]) -> None:
    save_file(
        {"features": torch.stack(rows).contiguous()},
        str(folder / f"features-{shard:05d}.safetensors"),
    )


def attach(
    model: Any,
    sources: dict[str, Any],
    root: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    precision: str = "fp32",
    quiet: bool = False,
) -> dict[str, str]:
    """Give every source that can read cached features its cache (rank 0 builds what is
    missing while the others wait). -> {source: "cached in FOLDER" or why it reads inputs}."""
    said = {}
    for name, source in sources.items():
        reason = why_not(model, source)
        if reason is not None:
            said[name] = f"reads its inputs: {reason}"
            continue
        folder = Path(root) / f"{name}-{fingerprint(model, source, precision)}"
        if rank == 0:
            build(model, source, folder, workers=workers, precision=precision, quiet=quiet)
        if world > 1:
            torch.distributed.barrier()
        source.features = FeatureCache(folder)
        said[name] = f"cached in {folder}"
    return said


def cache_stage(cfg: Any, *, quiet: bool = False) -> dict[str, str]:
    """`onellm cache-features STAGE.yaml`: build the stage's feature caches without training."""
    if cfg.feature_cache is None:
        raise ConfigError("feature_cache: name the folder to cache in (feature_cache=DIR)")
    model, added = prepare_model(cfg, resolve_device(cfg.device))
    sources = stage_sources(model, cfg)
    apply_trainable(
        nn.ModuleDict({"model": model, "aux": nn.ModuleDict()}), cfg.trainable, added, world=1
    )
    return attach(
        model,
        sources,
        cfg.feature_cache,
        workers=cfg.data_workers,
        precision=cfg.precision,
        quiet=quiet,
    )
