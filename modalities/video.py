"""Video: T frames, each CLIP-transformed like an image; frames are encoded, then mean-pooled.

OneLLM feeds each frame through CLIP's patch embedding alone, so the mean over encoded frames
keeps no order: a clip played backwards encodes the same. `motion=True` (the default) adds a
trainable patch embedding of each frame's change from the one before (`MotionPatchTokenizer`),
zero at the start, so that direction is visible in every frame's tokens. Official OneLLM
checkpoints convert with `motion=False` and encode exactly as OneLLM does.

Raw forms: a video file (mp4, m4v, mov, mkv, webm, avi, mpeg, ogv) or its bytes, a folder
of frame images, an animated GIF, a list of frames (paths / PIL / arrays), a (T, H, W, 3) or
(T, 3, H, W) array or tensor.

Video files are decoded with PyAV (see docs/media.md for why not torchcodec), sampled as
OneLLM's loader does (pytorchvideo's ConstantClipsPerVideoSampler): `frames` clips of
`clip_seconds` start evenly over [0, duration - clip_seconds), and each clip gives its first
frame. Only those frames are decoded: the reader seeks to the keyframe before each one
rather than decoding the whole file. OneLLM then takes 3 crops of each of 5 clips (15
frames); here each clip gives one centre crop, so `frames` is the clip count. A video no
longer than one clip would give OneLLM the same frame `frames` times; here its clips split
it evenly instead. A display rotation (phones' portrait videos) is applied, as EXIF is for
images. Frame lists, folders and GIFs carry no clock: `frames` are taken evenly from first
to last.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from onellm.modalities.clip_image import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ClipImageInput,
    ClipPatchTokenizer,
    open_image,
    to_image_tensor,
)
from PIL import Image, ImageSequence
from torch import nn

from onellm.data.draw import Scene, canvas, paint, shape_mask
from onellm.data.language import COLOURS, MOTIONS, SHAPES
from onellm.errors import InputError
from onellm.modeling.modality import EncoderInfo, as_path, check_readable
from onellm.registry import MODALITIES

STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv")
CLIP_SECONDS = 1.0  # OneLLM's fine-tuning loader: clip_duration=1, clips_per_video=5
SEEK_GAP = 2.0  # seconds; a nearer target is reached by decoding on, a farther one by seeking
EPS = 1e-4  # seconds of slack when comparing a frame's time to a clip's start


def clip_starts(duration: float, clips: int, clip: float = CLIP_SECONDS) -> list[float]:
    """OneLLM's clip start times (seconds from the first frame) for a `duration` s video."""
    if duration <= clip:  # OneLLM would start every clip at 0; split the video instead
        return [i * duration / clips for i in range(clips)]
    return [i * (duration - clip) / clips for i in range(clips)]


def read_video(name: str, raw: Any, clips: int, clip: float = CLIP_SECONDS) -> list[np.ndarray]:
    """A video file (path, bytes or binary file object) -> `clips` upright RGB (H, W, 3) uint8
    frames, one at each of OneLLM's clip starts."""
    path = as_path(raw)
    if path is not None:
        source, label = str(check_readable(name, path, VIDEO_SUFFIXES)), path.name
    else:
        source, label = (io.BytesIO(raw) if isinstance(raw, bytes) else raw), "the video bytes"
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise InputError(f"{name}: expected a video stream in {label!r}, got none")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > MAX_PIXELS:
                raise InputError(
                    f"{name}: expected frames of at most {MAX_PIXELS:,} pixels, got {w} x {h} "
                    f"in {label!r}"
                )
            stream.thread_type = "AUTO"
            duration = _duration(container, stream)
            if duration:
                frames, _ = decode_at(
                    name, label, container, stream, clip_starts(duration, clips, clip)
                )
            else:  # no duration in the header: decode all, take them evenly
                frames = [upright(f) for f in container.decode(stream)]
                if frames:
                    frames = [frames[i] for i in evenly(len(frames), clips)]
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{name}: expected a video file, got unreadable {label!r}: {e}") from e
    if not frames:
        raise InputError(f"{name}: expected at least one frame in {label!r}, got none")
    return frames


def decode_at(
    name: str, label: str, container: Any, stream: Any, starts: list[float]
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
        out.append(upright(frame))
    return out, decoded


def upright(frame: Any) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3), turned by its display rotation."""
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


def load_frames(name: str, raw: Any) -> list[Any]:
    """Split a raw video into a list of raw frames."""
    path = as_path(raw)
    if path is not None:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(
                    f"{name}: expected a folder of frame images, got {str(path)!r} with none"
                )
            return files
        check_readable(name, path, (".gif", ".npy", *VIDEO_SUFFIXES))
        if path.suffix.lower() == ".npy":
            return list(np.load(path, allow_pickle=False))
        open_image(name, path)  # raises a clear error if corrupt
        with Image.open(path) as im:
            return [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise InputError(f"{name}: expected at least one frame, got an empty list")
        return list(raw)
    if isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 4:
        return list(raw)
    shape = tuple(getattr(raw, "shape", ()))
    raise InputError(
        f"{name}: expected frames (folder, GIF, list, or a (T, H, W, 3) array), "
        f"got {type(raw).__name__} {shape}"
    )


def is_video_file(raw: Any) -> bool:
    """A path to a video container, or its bytes / an open binary file."""
    if isinstance(raw, (bytes, io.IOBase)):
        return True
    path = as_path(raw)
    return path is not None and path.suffix.lower() in VIDEO_SUFFIXES


class MotionPatchTokenizer(ClipPatchTokenizer):
    """CLIP's frozen patch embedding of each frame (`ClipPatchTokenizer`) plus a trainable one
    of the frame's change from the previous frame (none for the first). The motion weights
    start at zero, so a new video tokenizer encodes exactly as image's until training moves
    them."""

    def __init__(self, encoder: EncoderInfo) -> None:
        super().__init__()
        p = encoder.patch_size
        self.motion = nn.Conv2d(3, encoder.width, p, stride=p, bias=False)
        nn.init.zeros_(self.motion.weight)

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        tokens = super().forward(x, encoder)  # (B, T, S, W)
        if x.dim() == 4:
            x = x.unsqueeze(1)  # one frame
        change = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
        change = rearrange(change, "b t c h w -> (b t) c h w").to(self.motion.weight.dtype)
        motion = rearrange(self.motion(change), "(b t) w gh gw -> b t (gh gw) w", b=x.shape[0])
        return tokens + motion


class VideoModality(ClipImageInput):
    """`frames` frames of (3, size, size): (frames, 3, size, size)."""

    name = "video"

    def __init__(
        self,
        *,
        frames: int = 15,
        size: int | None = None,
        motion: bool = True,
        clip_seconds: float = CLIP_SECONDS,
    ) -> None:
        super().__init__(size=size)
        if frames < 1:
            raise InputError(f"{self.name}: frames must be >= 1, got {frames}")
        if clip_seconds <= 0:
            raise InputError(f"{self.name}: clip_seconds must be > 0, got {clip_seconds}")
        self.frames, self.motion, self.clip_seconds = frames, motion, clip_seconds

    def input_shape(self) -> tuple[int | None, ...]:
        return (None, 3, self.size, self.size)  # any frame count is accepted by the model

    def preprocess(self, raw: Any) -> torch.Tensor:
        if is_video_file(raw):
            frames = read_video(self.name, raw, self.frames, self.clip_seconds)
            return torch.stack([self.image(f) for f in frames])
        frames = load_frames(self.name, raw)
        if not len(frames):
            raise InputError(f"{self.name}: expected at least one frame, got none")
        return torch.stack([self.image(frames[i]) for i in evenly(len(frames), self.frames)])

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return MotionPatchTokenizer(encoder) if self.motion else ClipPatchTokenizer()

    def write(self, raw: Any, stem: Path) -> Path:
        """The frames the model takes from `raw` as an H.264 mp4 (lossless RGB), one a
        second: OneLLM's clip starts then land on them, so the file reads as `raw` does."""
        frames = load_frames(self.name, raw)
        frames = [to_image_tensor(self.name, frames[i]) for i in evenly(len(frames), self.frames)]
        path = Path(stem).with_suffix(".mp4")
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264rgb", rate=1)
            stream.height, stream.width = frames[0].shape[1:]
            stream.pix_fmt, stream.codec_context.options = "rgb24", {"crf": "0"}
            for f in frames:
                rgb = (f * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(stream.encode(None))
        return path

    def captions(self) -> list[str]:
        return [f"a {c} {s} moving {m}" for c in COLOURS for s in SHAPES for m in MOTIONS]

    def render(self, rng: np.random.Generator, frames: int = 4) -> Scene:
        """A shape moving left/right/up/down, drawn with a faint trail so that every frame
        (not only their order, which the frame mean discards) shows the direction."""
        size = self.size or 64
        shape, colour, motion = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(MOTIONS)
        dx, dy = STEP[motion]
        speed, radius = size * 0.12, size * rng.uniform(0.14, 0.17)
        x0 = size / 2 - dx * speed * (frames - 1) / 2 + rng.uniform(-2, 2)
        y0 = size / 2 - dy * speed * (frames - 1) / 2 + rng.uniform(-2, 2)
        background = canvas(rng, size)
        out = []
        for t in range(frames):
            img = background.copy()
            for back, alpha in ((2, 0.25), (1, 0.5)):  # the trail behind the shape
                cx, cy = x0 + dx * speed * (t - back), y0 + dy * speed * (t - back)
                paint(img, shape_mask(shape, size, cx, cy, radius * 0.8), colour, rng, alpha)
            paint(
                img,
                shape_mask(shape, size, x0 + dx * speed * t, y0 + dy * speed * t, radius),
                colour,
                rng,
            )
            out.append(img)
        return Scene(
            input=np.stack(out),
            caption=f"a {colour} {shape} moving {motion}",
            qa=[
                ("Which way does it move?", motion),
                ("What colour is it?", colour),
                ("What shape is it?", shape),
            ],
            attrs={"shape": shape, "colour": colour, "motion": motion},
        )


MODALITIES.register("video", VideoModality)
