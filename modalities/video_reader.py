"""Video containers (mp4, m4v, mov, mkv, webm, avi, mpeg, ogv), read with PyAV (see
docs/media.md for why not torchcodec) at OneLLM's clip starts (pytorchvideo's
ConstantClipsPerVideoSampler): `clips` clips of `clip` seconds start evenly over
[0, duration - clip), and each clip gives its first frame. Only those frames are decoded:
the reader seeks to the keyframe before each one rather than decoding the whole file. A
video no longer than one clip would give OneLLM the same frame `clips` times; here its
clips split it evenly instead. A display rotation (phones' portrait videos) is applied, as
EXIF is for images.

A stream with no duration (a raw H.264 stream under a .mp4 name) is read twice: its
packets counted without decoding (at most `ONELLM_MAX_FRAMES`), then decoded keeping only
the frames taken evenly from first to last, each dropped as soon as it is not one of them.
Frames over `ONELLM_MAX_PIXELS` or `ONELLM_MAX_DECODE_MB` are refused from the stream's
header; large frames are scaled down as they are converted to RGB.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

from onellm.errors import ConfigError, InputError
from onellm.modalities.image_reader import reduce_factor
from onellm.modeling.media_limits import check_decode, check_pixels, max_frames
from onellm.modeling.modality import as_path, check_readable

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv")
CLIP_SECONDS = 1.0  # OneLLM's fine-tuning loader: clip_duration=1, clips_per_video=5
SEEK_GAP = 2.0  # seconds; a nearer target is reached by decoding on, a farther one by seeking
EPS = 1e-4  # seconds of slack when comparing a frame's time to a clip's start


def clip_starts(duration: float, clips: int, clip: float = CLIP_SECONDS) -> list[float]:
    """OneLLM's clip start times (seconds from the first frame) for a `duration` s video."""
    if duration <= clip:  # OneLLM would start every clip at 0; split the video instead
        return [i * duration / clips for i in range(clips)]
    return [i * (duration - clip) / clips for i in range(clips)]


def read_video(
    name: str, raw: Any, clips: int, clip: float = CLIP_SECONDS, fit: int | None = None
) -> list[np.ndarray]:
    """A video file (path, bytes or binary file object) -> `clips` upright RGB (H, W, 3) uint8
    frames, one at each of OneLLM's clip starts. `fit`: the short side the caller resizes
    to; larger frames are scaled down by an integer factor as they are converted (by
    FFmpeg's area filter), so no full-size RGB copy of a large frame is made."""
    path = as_path(raw)
    if path is not None:
        source, label = str(check_readable(name, path, VIDEO_SUFFIXES)), path.name
    else:
        source, label = (io.BytesIO(raw) if isinstance(raw, bytes) else raw), "the video bytes"
    try:
        with av.open(source) as container:
            stream = video_stream(name, label, container)
            duration = _duration(container, stream)
            if duration:
                frames, _ = decode_at(
                    name, label, container, stream, clip_starts(duration, clips, clip), fit
                )
            else:  # no duration in the header (a raw stream): count, then decode the chosen
                count = count_frames(name, label, container, stream)
        if not duration:
            if not isinstance(source, str):
                source.seek(0)
            with av.open(source) as container:
                stream = video_stream(name, label, container)
                frames = decode_chosen(
                    container, stream, evenly(count, clips) if count else [], fit
                )
    except (InputError, ConfigError):  # a bad limit setting, too
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{name}: expected a video file, got unreadable {label!r}: {e}") from e
    if not frames:
        raise InputError(f"{name}: expected at least one frame in {label!r}, got none")
    return frames


def video_stream(name: str, label: str, container: Any) -> Any:
    """The first video stream, its frame size checked (ONELLM_MAX_PIXELS, _DECODE_MB)."""
    if not container.streams.video:
        raise InputError(f"{name}: expected a video stream in {label!r}, got none")
    stream = container.streams.video[0]
    w, h = stream.codec_context.width, stream.codec_context.height
    check_pixels(name, w, h, repr(label))
    check_decode(name, (w, h), "RGB", repr(label))
    stream.thread_type = "SLICE"  # frame threads hold a frame each: +100 MB at 4K, kept
    return stream


def count_frames(name: str, label: str, container: Any, stream: Any) -> int:
    """The video packets in a stream with no duration (read, not decoded), at most
    `max_frames()` (ONELLM_MAX_FRAMES)."""
    cap, count = max_frames(), 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if count > cap:
                raise InputError(
                    f"{name}: expected a video with a duration, or at most {cap:,} frames "
                    f"(ONELLM_MAX_FRAMES), got more in {label!r}, which has no duration"
                )
    return count


def decode_chosen(container: Any, stream: Any, chosen: Any, fit: int | None) -> list[np.ndarray]:
    """Decode forward, keeping only the frames at `chosen` (increasing indices, repeats
    allowed): every other frame is dropped as soon as it is decoded. A stream that ends
    early repeats its last kept frame."""
    want = list(chosen)
    out: list[np.ndarray] = []
    for i, frame in enumerate(container.decode(stream)):
        if not want:
            break
        if want[0] == i:
            rgb = upright(frame, fit)
            while want and want[0] == i:
                out.append(rgb)
                want.pop(0)
    return out + [out[-1]] * len(want) if out else out


def decode_at(
    name: str,
    label: str,
    container: Any,
    stream: Any,
    starts: list[float],
    fit: int | None = None,
) -> tuple[list[np.ndarray], int]:
    """The first frame at or after each start (seconds, increasing; the last frame for a start
    inside it) and the number of frames decoded to reach them."""
    origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    rate = stream.average_rate or stream.guessed_rate
    step = float(1 / rate) if rate else 0.5  # one frame's length: a start within it is inside
    out: list[np.ndarray] = []
    frame, frames, decoded = None, None, 0
    for t in starts:
        t += origin
        if frame is not None and frame.time >= t - EPS:  # a short video: the same frame again
            out.append(out[-1])
            continue
        if frames is None or t - frame.time > SEEK_GAP:
            container.seek(int(t / stream.time_base), stream=stream)  # the keyframe before t
            frames = container.decode(stream)
        found = False
        for frame in frames:  # noqa: B007 (frame is used after the loop)
            decoded += 1
            if frame.time is None:
                raise InputError(f"{name}: expected timed frames in {label!r}, got none")
            if found := frame.time >= t - EPS:
                break
        if not found and (frame is None or t - frame.time > step + EPS):
            end = "no frame" if frame is None else f"its last frame at {frame.time - origin:.2f} s"
            raise InputError(
                f"{name}: expected a frame at {t - origin:.2f} s in {label!r}, got {end} "
                "(a truncated file, or a duration in its header that the stream does not have)"
            )
        out.append(upright(frame, fit))
    return out, decoded


def upright(frame: Any, fit: int | None = None) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3), turned by its display rotation; scaled
    down by `image_reader.reduce_factor` (FFmpeg's area filter) when `fit` asks less."""
    k = reduce_factor((frame.width, frame.height), fit, None)
    if k > 1:
        small = frame.reformat(frame.width // k, frame.height // k, "rgb24", interpolation="AREA")
        rgb = small.to_ndarray()
    else:
        rgb = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def evenly(count: int, n: int) -> np.ndarray:
    """`n` indices from 0 to count - 1, evenly spaced (repeats when count < n)."""
    return np.linspace(0, count - 1, n).round().astype(int)


def is_video_file(raw: Any) -> bool:
    """A path to a video container, or its bytes / an open binary file."""
    if isinstance(raw, (bytes, io.IOBase)):
        return True
    path = as_path(raw)
    return path is not None and path.suffix.lower() in VIDEO_SUFFIXES
