"""WebDataset tar shards as a training source: `data: shards/train-{000000..000099}.tar`.

A sample is the tar members sharing a key (the format LAION / WebVid loaders write):
`000123.jpg` (or .png, .wav, .npy, .gif, ... by the input's extension; paired inputs as
`000123.rgb.png` + `000123.depth.png`) and `000123.json` with the caption or the LLaVA
`conversations`, and optionally the `modality`.

Shards are written with webdataset's `ShardWriter` (`onellm shards MANIFEST OUT`) and read
by position with `wids` (webdataset's indexed reader: the tar's members are indexed once,
mmapped, read at an offset), so a shard source keeps the recipe's (seed, position) replay
guarantee that a streaming `WebDataset` pipeline cannot. A process holds at most
`OPEN_SHARDS` shard indexes at once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from braceexpand import braceexpand
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from onellm.data.manifest import Manifest, Record, fill_text
from onellm.errors import InputError
from onellm.modeling.media_limits import IMAGE_FORMATS

OPEN_SHARDS = 8  # indexes of recently read shards kept open per process
IMAGE_EXTS = {"png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"}
TEXT_EXTS = {"json", "txt", "cls"}


def is_shards(data: str) -> bool:
    """Whether a source's `data` names tar shards (a .tar path or brace pattern)."""
    return data.endswith(".tar")


@dataclass
class Member:
    """A tar member's bytes and extension, decoded when the example is made."""

    ext: str
    data: bytes
    where: str


def _index(path: str) -> list[tuple[str, int, int]]:
    """(name, header offset, size) of every file member, as wids' mmapped indexer reads it."""
    from wids.wids_mmtar import MMIndexedTar  # webdataset's: heavy, loaded only for shards

    try:
        tar = MMIndexedTar(path)
    except (struct.error, ValueError, UnicodeDecodeError, AssertionError, OSError) as e:
        raise InputError(
            f"shard {path}: expected a tar file of samples, got unreadable: {e}"
        ) from e
    try:
        return list(tar.by_index)
    finally:
        tar.close()


@functools.lru_cache(maxsize=OPEN_SHARDS)
def _mmap(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _split(name: str) -> tuple[str, str]:
    base = name.split("/")[-1]
    key, _, ext = base.partition(".")
    return key, ext


class Shards:
    """The samples of a list of tar shards, by position: `shards[i]` -> `Record`.

    Every shard is indexed once, here, into numpy arrays (each member's offset, size and
    extension; each sample's first member: ~40 bytes a sample), so a read is one slice of
    the shard's mmap, whichever shard a shuffled position lands in."""

    def __init__(self, spec: str, modality: str) -> None:
        self.paths = [str(Path(p)) for p in braceexpand(spec)]
        for p in self.paths:
            if not Path(p).is_file():
                raise InputError(f"shards: expected tar files matching {spec!r}, got no {p!r}")
        self.modality = modality
        exts: dict[str, int] = {}
        offsets, sizes, kinds, starts, counts = [], [], [], [], []
        for path in self.paths:
            n = 0
            last = None
            for name, offset, size in _index(path):
                key, ext = _split(name)
                if key != last:  # webdataset: a sample's members are consecutive
                    starts.append(len(offsets))
                    last, n, seen = key, n + 1, set()
                if ext in seen:
                    raise InputError(
                        f"shard {path}, sample {key!r}: expected one member per "
                        f"extension, got .{ext} twice"
                    )
                seen.add(ext)
                offsets.append(offset)
                sizes.append(size)
                kinds.append(exts.setdefault(ext, len(exts)))
            counts.append(n)
        if not starts:
            raise InputError(f"shards: expected at least one sample in {spec!r}, got none")
        self.exts = list(exts)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.kinds = np.asarray(kinds, dtype=np.int16)
        self.starts = np.asarray([*starts, len(offsets)], dtype=np.int64)
        self.ends = np.cumsum(counts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(i)
        path = self.paths[int(np.searchsorted(self.ends, i, side="right"))]
        m = _mmap(path)
        members, key = {}, None
        for j in range(int(self.starts[i]), int(self.starts[i + 1])):
            offset, size, ext = int(self.offsets[j]), int(self.sizes[j]), self.exts[self.kinds[j]]
            if key is None:
                key = _split(
                    m[offset : offset + 100].split(b"\0", 1)[0].decode("utf-8", "replace")
                )[0]
            data = m[offset + 512 : offset + 512 + size]
            if len(data) != size:
                raise InputError(
                    f"shard {path}, sample {key!r}: member .{ext} is truncated "
                    f"({len(data)} of {size} bytes)"
                )
            members[ext] = data
        where = f"shard {path}, sample {key!r}"
        if "json" not in members:
            raise InputError(
                f"{where}: expected a .json member with the caption, got {sorted(members)}"
            )
        try:
            meta = json.loads(members.pop("json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: expected its .json member to be a JSON object: {e}") from e
        if not isinstance(meta, dict):
            raise InputError(f"{where}: expected its .json member to be a JSON object")
        modality = meta.get("modality", self.modality)
        if modality != self.modality:
            raise InputError(f"{where}: expected a {self.modality} sample, got {modality!r}")
        inputs = {
            e: Member(e, d, f"{where}, member .{e}")
            for e, d in members.items()
            if e not in TEXT_EXTS and not e.startswith("__")
        }
        if not inputs:
            raise InputError(f"{where}: expected an input member beside the .json, got none")
        if len(inputs) == 1:
            value: Any = next(iter(inputs.values()))
        else:  # paired: rgb.png + depth.png -> {"rgb": .., "depth": ..}
            value = {e.split(".", 1)[0]: m for e, m in inputs.items()}
        record = Record(modality=modality, input=value)
        fill_text(record, meta, where)
        return record


@contextlib.contextmanager
def materialised(value: Any) -> Iterator[Any]:
    """A record's input as a modality's `preprocess` reads it: images and arrays decoded
    in memory, other members (audio, video, ...) as a temporary file with their extension,
    so every modality's own file loader reads shards too. Paths pass through."""
    if isinstance(value, dict):
        with contextlib.ExitStack() as stack:
            yield {k: stack.enter_context(materialised(v)) for k, v in value.items()}
        return
    if not isinstance(value, Member):
        yield value
        return
    last = value.ext.rsplit(".", 1)[-1].lower()
    decoded: Any = None
    try:  # decode here; what the modality then does with it raises its own errors
        if last in IMAGE_EXTS:
            with Image.open(io.BytesIO(value.data), formats=IMAGE_FORMATS) as im:
                im.load()
                decoded = im.copy()
        elif last == "npy":
            decoded = np.load(io.BytesIO(value.data), allow_pickle=False)
        elif last == "npz":
            with np.load(io.BytesIO(value.data), allow_pickle=False) as z:
                decoded = z[z.files[0]]
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as e:
        raise InputError(
            f"{value.where}: expected a .{last} file, got unreadable bytes: {e}"
        ) from e
    if decoded is not None:
        yield decoded
        return
    with tempfile.NamedTemporaryFile(suffix=f".{last}") as f:
        f.write(value.data)
        f.flush()
        yield f.name


def write_shards(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    per_shard: int = 1000,
    quiet: bool = False,
) -> dict[str, str]:
    """Write a manifest's records as tar shards, one folder per modality:
    OUT/<modality>/shard-000000.tar, ... -> {modality: the brace pattern to train from}."""
    import webdataset as wds  # heavy, loaded only to write shards

    out = Path(out)
    m = Manifest(manifest)
    writers: dict[str, Any] = {}
    counts: dict[str, int] = {}
    try:
        for i in tqdm(range(len(m)), desc="shards", unit="record", disable=quiet):
            r = m[i]
            if r.modality not in writers:
                (out / r.modality).mkdir(parents=True, exist_ok=True)
                if any((out / r.modality).iterdir()):  # its old shards would join the pattern
                    raise InputError(
                        f"shards: expected an empty folder for {r.modality}, got files "
                        f"in {str(out / r.modality)!r}"
                    )
                writers[r.modality] = wds.ShardWriter(
                    str(out / r.modality / "shard-%06d.tar"), maxcount=per_shard, verbose=0
                )
                counts[r.modality] = 0
            sample: dict[str, Any] = {"__key__": f"{counts[r.modality]:09d}"}
            parts = r.input if isinstance(r.input, dict) else {None: r.input}
            for part, path in parts.items():
                ext = Path(path).suffix.lower().lstrip(".")
                if not ext or Path(path).is_dir():
                    raise InputError(
                        f"manifest {m.where(int(m.lines[i]))}: expected an input "
                        f"file with an extension to shard, got {path!r}"
                    )
                sample[ext if part is None else f"{part}.{ext}"] = Path(path).read_bytes()
            text = (
                {
                    "conversations": [
                        {"from": f, "value": v}
                        for q, a in r.turns
                        for f, v in (("human", q), ("gpt", a))
                    ]
                }
                if r.turns
                else {"caption": r.caption}
            )
            sample["json"] = {"modality": r.modality, **text}
            writers[r.modality].write(sample)
            counts[r.modality] += 1
    finally:
        for w in writers.values():
            w.close()
    patterns = {}
    for mod in writers:
        n = len(list((out / mod).glob("shard-*.tar")))
        patterns[mod] = str(
            out / mod / (f"shard-{{000000..{n - 1:06d}}}.tar" if n > 1 else "shard-000000.tar")
        )
    return patterns
