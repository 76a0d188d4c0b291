"""Small files that ask a reader for far more memory than their size (issue 36), and a
peak-RSS meter. Shared by test_hostile_media.py (in-process, one case at a time) and
test_memory_soak.py (the same files through a real server).

Each builder writes one file under `d` and returns its path; every file is under 1 MB.
"""

from __future__ import annotations

import ctypes
import gc
import gzip
import io
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import av
import nibabel
import numpy as np
from PIL import Image

MB = 1 << 20


def npz_bomb(d: Path) -> Path:
    """An .npz whose one member, 320 MB of zeros, is bzip2-compressed to a few KiB."""
    p = d / "bomb.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (80 * MB,)}
    )
    zero = bytes(8 * MB)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_BZIP2, compresslevel=9) as z:
        with z.open("arr_0.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(40):
                f.write(zero)
    return p


def gif_frames(d: Path, frames: int = 100, side: int = 1024) -> Path:
    """A GIF of `frames` frames on a `side`^2 canvas, every frame after the first one
    pixel at its own place. PIL writes the first; the others are appended as GIF's
    blocks (a graphic control extension, a 1 x 1 image descriptor, its LZW code), as
    PIL's writer would take seconds to diff 100 full canvases."""
    p = d / "frames.gif"
    first = Image.new("P", (side, side), 0)
    first.putpalette([0, 0, 0, 255, 255, 255])
    out = io.BytesIO()
    first.save(out, format="GIF")
    head = out.getvalue().removesuffix(b"\x3b")  # without the trailer
    lzw = bytes([2, 2, 0x4C, 0x01, 0])  # min code size 2; clear, index 1, end; terminator
    blocks = [
        b"\x21\xf9\x04\x04\x04\x00\x00\x00"  # keep the canvas, 40 ms
        + struct.pack("<BHHHHB", 0x2C, i % side, i // side, 1, 1, 0)
        + lzw
        for i in range(1, frames)
    ]
    p.write_bytes(head + b"".join(blocks) + b"\x3b")
    return p


def h264_raw(d: Path, frames: int = 150, side: int = 1024) -> Path:
    """A raw H.264 elementary stream (no container, so no duration) of still frames."""
    return h264(d / "stream.mp4", "h264", frames, (side, side))  # named as an upload is


def mp4_4k(d: Path) -> Path:
    """Two seconds of black 3840 x 2160 H.264 in an mp4 (~25 KiB)."""
    return h264(d / "uhd.mp4", "mp4", 50, (3840, 2160))


def h264(p: Path, container: str, frames: int, size: tuple[int, int]) -> Path:
    """Black frames encoded by libx264 (they compress to a few bytes each)."""
    black = av.VideoFrame.from_ndarray(np.zeros((size[1], size[0], 3), np.uint8), format="rgb24")
    with av.open(str(p), "w", format=container) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = size
        s.pix_fmt, s.codec_context.options = "yuv420p", {"preset": "ultrafast"}
        for _ in range(frames):
            c.mux(s.encode(black))
        c.mux(s.encode())
    return p


def png_huge(d: Path, side: int = 8192) -> Path:
    """An 8192^2 one-bit PNG of ~11 KiB (67 MP)."""
    p = d / "huge.png"
    Image.new("1", (side, side), 0).save(p, optimize=True)
    return p


def png_palette40(d: Path) -> Path:
    """A 6324^2 palette PNG (just under 40 MP, the default ONELLM_MAX_PIXELS; ~12 KiB)."""
    p = d / "palette40.png"
    Image.new("P", (6324, 6324), 3).save(p, optimize=True)
    return p


def png_rgb(d: Path, megapixels: float, name: str) -> Path:
    """A flat-colour RGB PNG of about `megapixels` MP (a few KiB)."""
    side = int((megapixels * 1e6) ** 0.5)
    p = d / name
    Image.new("RGB", (side, side), (90, 120, 150)).save(p, optimize=True)
    return p


def jpeg_large(d: Path, side: int = 6000) -> Path:
    """A 36 MP JPEG of one colour (~0.5 MB)."""
    p = d / "large.jpg"
    Image.new("RGB", (side, side), (90, 120, 150)).save(p, quality=50)
    return p


def eps_as_png(d: Path) -> Path:
    """PostScript bytes under a .png name (PIL would hand them to Ghostscript)."""
    p = d / "page.png"
    p.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
        b"newpath 0 0 moveto 100 100 lineto stroke showpage\n%%EOF\n"
    )
    return p


def npy_huge_shape(d: Path) -> Path:
    """A .npy whose header promises (100000, 100000) float32 (40 GB) over 64 bytes of data."""
    p = d / "huge.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        f.write(bytes(64))
    return p


def nifti_huge_shape(d: Path) -> Path:
    """A .nii.gz whose header promises a (1024, 1024, 1024, 4) volume: 16 GB of float32."""
    p = d / "huge.nii.gz"
    img = nibabel.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    img.header.set_data_shape((1024, 1024, 1024, 4))
    raw = img.header.binaryblock + bytes(4 + 64)  # header, extension flag, a little data
    p.write_bytes(gzip.compress(raw))
    return p


def wav_hours(d: Path, rate: int = 16_000, channels: int = 2) -> Path:
    """A WAV whose header says 2^32 - 1 data bytes (37 hours at 16 kHz stereo) over 1 s."""
    p = d / "hours.wav"
    data = np.zeros(rate * channels, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    riff = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
    p.write_bytes(riff + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + b"\xff" * 4 + data)
    return p


def png_rgb16(d: Path) -> Path:
    return png_rgb(d, 16, "rgb16.png")


def png_rgb10(d: Path) -> Path:
    return png_rgb(d, 10, "rgb10.png")


def normal_npz(d: Path) -> dict[str, Path]:
    """A depth-pair-like input: a small rgb PNG and a normal map .npz of 16 MiB of float32
    zeros (just under ONELLM_MAX_ARRAY_MB) in ~16 KiB."""
    Image.new("RGB", (40, 30)).save(d / "n_rgb.png")
    np.savez_compressed(d / "normal.npz", np.zeros((1182, 1182, 3), np.float32))
    return {"rgb": d / "n_rgb.png", "normal": d / "normal.npz"}


def size_of(raw: Path | dict[str, Path]) -> int:
    """A case's bytes on disk (a pair's two files together)."""
    return (
        sum(p.stat().st_size for p in raw.values()) if isinstance(raw, dict) else raw.stat().st_size
    )


def as_raw(raw: Path | dict[str, Path]) -> str | dict[str, str]:
    """A case as a modality's preprocess takes it (paths as strings)."""
    return {k: str(p) for k, p in raw.items()} if isinstance(raw, dict) else str(raw)


# case name -> (builder, modality); the files are built once per test session
CASES: dict[str, tuple[Callable[[Path], Path | dict[str, Path]], str]] = {
    "npz zip bomb (point)": (npz_bomb, "point"),
    "GIF 100 frames 1024^2 (video)": (gif_frames, "video"),
    "GIF 100 frames 1024^2 (image)": (gif_frames, "image"),
    "raw H.264, no duration (video)": (h264_raw, "video"),
    "H.264 mp4 3840 x 2160 (video)": (mp4_4k, "video"),
    "PNG 8192^2 (image)": (png_huge, "image"),
    "npy huge header shape (point)": (npy_huge_shape, "point"),
    "NIfTI huge header shape (fmri)": (nifti_huge_shape, "fmri"),
    "WAV claiming hours (audio)": (wav_hours, "audio"),
    "PNG palette 40 MP (image)": (png_palette40, "image"),
    "PNG RGB 16 MP (image)": (png_rgb16, "image"),
    "PNG RGB 10 MP (image)": (png_rgb10, "image"),
    "JPEG 36 MP (image)": (jpeg_large, "image"),
    "EPS bytes as .png (image)": (eps_as_png, "image"),
    "normal map .npz, 16 MiB of float32 (normal)": (normal_npz, "normal"),
}


def build_all(d: Path) -> dict[str, tuple[Path | dict[str, Path], str]]:
    """Every case's file (built once each; a pair for normal) and modality."""
    built: dict[Callable, Path | dict[str, Path]] = {}
    out = {}
    for name, (make, modality) in CASES.items():
        if make not in built:
            built[make] = make(d)
        out[name] = (built[make], modality)
    return out


# ----------------------------------------------------------------------------- the meter
def _status(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1]) * 1024


def trim() -> None:
    """Collect garbage and hand freed heap back to the OS: glibc keeps freed arenas
    resident otherwise, and an RSS reading would show memory nobody holds."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss() -> int:
    """This process's resident memory now, in bytes (after `trim`)."""
    trim()
    return _status("VmRSS")


def anon() -> int:
    """This process's resident anonymous memory (heap, arrays; no library code), in bytes,
    after `trim`: what a request could leave behind."""
    trim()
    return _status("RssAnon")


class PeakRSS:
    """`with PeakRSS() as m: ...` -> m.added: the peak resident memory the block added
    over what was resident when it began (bytes). Linux resets the high-water mark
    (VmHWM) on writing 5 to /proc/self/clear_refs, so the peak is the kernel's own, not
    a sample. File-backed pages the block faulted back in (library code the kernel had
    evicted on a busy machine: up to ~30 MB seen here) are not the request's memory, so
    their growth (RssFile, still resident after the block) is taken off."""

    def __enter__(self) -> PeakRSS:
        self.start = rss()
        self.file = _status("RssFile")
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc) -> None:
        faulted = max(0, _status("RssFile") - self.file)
        self.added = _status("VmHWM") - self.start - faulted
        self.after = rss() - self.start - faulted
