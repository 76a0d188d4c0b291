"""How much one input may ask a reader for, checked from the file's header before anything
is decoded, so that a small hostile file (a zip bomb, a header that promises a huge shape,
a GIF of many full-canvas frames) is refused instead of filling memory (docs/media.md).

Limits are read from the environment when a file is read (no module state), each with a
default sized so that a server request of at most 1 MB stays within 64 MB of memory:

| variable                | default    | bounds                                                |
| ----------------------- | ---------- | ----------------------------------------------------- |
| `ONELLM_MAX_PIXELS`     | 40,000,000 | pixels of one image, depth/normal map or video frame  |
| `ONELLM_MAX_DECODE_MB`  | 40         | the memory one image or frame is decoded into (PIL    |
|                         |            | decodes a PNG whole: 1-4 bytes a pixel)               |
| `ONELLM_MAX_ARRAY_MB`   | 16         | the bytes one array file (.npy, .npz member, NIfTI,   |
|                         |            | point cloud, audio read) unpacks to                   |
| `ONELLM_MAX_FRAMES`     | 18,000     | frames decoded from one video without a duration      |
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from onellm.errors import ConfigError, InputError

# the image formats onellm reads: `Image.open(..., formats=IMAGE_FORMATS)`, so that PIL
# never identifies EPS (and hands it to Ghostscript) or any other format (JPEG opens MPO)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000  # a 40 MP photo; PIL's own guard refuses at 179 MP, far later
MAX_DECODE_MB = 40.0  # a 10 MP RGB image decoded whole (a JPEG decodes at 1/8 scale or less)
MAX_ARRAY_MB = 16.0  # 4M float32 values: a 700k-point cloud, three NSD-sized fMRI volumes
MAX_FRAMES = 18_000  # ten minutes at 30 fps; only an untimed stream is counted frame by frame


def _setting(var: str, default: float) -> float:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{var}: expected a positive number, got {raw!r}")
    return value


def max_pixels() -> int:
    """Pixels allowed in one image or frame (`ONELLM_MAX_PIXELS`)."""
    return int(_setting("ONELLM_MAX_PIXELS", MAX_PIXELS))


def max_decode_bytes() -> int:
    """Bytes one image or frame may be decoded into (`ONELLM_MAX_DECODE_MB`, in MiB)."""
    return int(_setting("ONELLM_MAX_DECODE_MB", MAX_DECODE_MB) * (1 << 20))


def max_array_bytes() -> int:
    """Bytes one array may unpack to (`ONELLM_MAX_ARRAY_MB`, in MiB)."""
    return int(_setting("ONELLM_MAX_ARRAY_MB", MAX_ARRAY_MB) * (1 << 20))


def max_frames() -> int:
    """Frames decoded from one video that has no duration (`ONELLM_MAX_FRAMES`)."""
    return int(_setting("ONELLM_MAX_FRAMES", MAX_FRAMES))


def check_pixels(name: str, width: int, height: int, label: str) -> None:
    """`InputError` when a `width` x `height` image is over `max_pixels()`."""
    cap = max_pixels()
    if width * height > cap:
        raise InputError(
            f"{name}: expected an image of at most {cap:,} pixels (ONELLM_MAX_PIXELS), "
            f"got {width} x {height} = {width * height:,} in {label}"
        )


def bytes_per_pixel(mode: str) -> int:
    """What PIL stores a pixel of `mode` in: 1 byte (one-bit, grey, palette), 2 (16-bit
    grey), else 4 (RGB is stored as RGBX)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def check_decode(name: str, size: tuple[int, int], mode: str, label: str) -> None:
    """`InputError` when decoding a `size` image of PIL `mode` needs more than
    `max_decode_bytes()`."""
    need, cap = size[0] * size[1] * bytes_per_pixel(mode), max_decode_bytes()
    if need > cap:
        raise InputError(
            f"{name}: expected an image that decodes into at most {amount(cap)} "
            f"(ONELLM_MAX_DECODE_MB), got {size[0]} x {size[1]} {mode} = {amount(need)} "
            f"in {label}"
        )


def amount(size: int) -> str:
    """A byte count as people read it: '320.0 MiB', '7,200 bytes'."""
    return f"{size / (1 << 20):,.1f} MiB" if size >= 1 << 20 else f"{size:,} bytes"


def check_bytes(name: str, size: int, what: str, label: str) -> None:
    """`InputError` when `what` (a shape and dtype, say) needs more than `max_array_bytes()`."""
    cap = max_array_bytes()
    if size > cap:
        raise InputError(
            f"{name}: expected at most {amount(cap)} (ONELLM_MAX_ARRAY_MB) in {label}, "
            f"got {what} = {amount(size)}"
        )


def npy_header(name: str, f: BinaryIO, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype in a .npy stream's header (the stream is left at
    the data); refused when the array would be over `max_array_bytes()`."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 only differs for structured dtypes with non-latin-1 field names
            raise ValueError(f"format version {version} is not read here")
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{name}: expected a .npy array, got unreadable {label}: {e}") from e
    if dtype.hasobject:
        raise InputError(f"{name}: expected a numeric array in {label}, got dtype {dtype}")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_bytes(name, size, f"shape {shape} of {dtype}", label)
    return shape, fortran, dtype


def read_npy(name: str, path: Path) -> np.ndarray:
    """A .npy file, its header checked first (size, and that the file holds that much)."""
    label = repr(str(path))
    with open(path, "rb") as f:
        shape, _, dtype = npy_header(name, f, label)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        left = path.stat().st_size - f.tell()
        if left < need:
            raise InputError(
                f"{name}: expected {need:,} bytes of data for shape {shape} in {label}, "
                f"got {left:,} (a truncated file, or a header that lies)"
            )
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz(name: str, path: Path) -> np.ndarray:
    """The first array of an .npz, from its zip entry's and .npy header's sizes first (a
    zip bomb is refused before a byte is inflated)."""
    label = repr(str(path))
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if not infos:
                raise InputError(f"{name}: expected an array in {label}, got an empty .npz")
            info = infos[0]  # np.load's `files[0]`: the first in the archive
            check_bytes(name, info.file_size, f"member {info.filename!r}", label)
            with z.open(info) as f:
                npy_header(name, f, f"{label} member {info.filename!r}")
            with z.open(info) as f:  # again from the start: read_array reads the header too
                return np.lib.format.read_array(f, allow_pickle=False)
    except (InputError, ConfigError):  # a bad limit setting, too
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
        raise InputError(f"{name}: expected an .npz archive, got unreadable {label}: {e}") from e


def check_tensor(name: str, t: Any, label: str) -> None:
    """A loaded tensor's size as float32, before it is copied (a view may be far larger
    than the storage a file holds)."""
    check_bytes(name, t.numel() * 4, f"shape {tuple(t.shape)} as float32", label)
