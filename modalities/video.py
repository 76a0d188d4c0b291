"""Video: T frames, each CLIP-transformed like an image; frames are encoded, then mean-pooled.

OneLLM feeds each frame through CLIP's patch embedding alone, so the mean over encoded frames
keeps no order: a clip played backwards encodes the same. `motion=True` (the default) adds a
trainable patch embedding of each frame's change from the one before (`MotionPatchTokenizer`),
zero at the start, so that direction is visible in every frame's tokens. Official OneLLM
checkpoints convert with `motion=False` and encode exactly as OneLLM does.

Raw forms: a video file (mp4, m4v, mov, mkv, webm, avi, mpeg, ogv) or its bytes, a folder
of frame images, an animated GIF, a list of frames (paths / PIL / arrays), a (T, H, W, 3) or
(T, 3, H, W) array or tensor.

Video files are decoded with PyAV and sampled as OneLLM's loader does (video_reader.py):
`frames` clips of `clip_seconds`, each giving its first frame. OneLLM then takes 3 crops of
each of 5 clips (15 frames); here each clip gives one centre crop, so `frames` is the clip
count. Frame lists, folders and GIFs carry no clock: `frames` are taken evenly from first
to last.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch import nn

from onellm.data.draw import Scene, canvas, paint, shape_mask
from onellm.data.language import COLOURS, MOTIONS, SHAPES
from onellm.errors import ConfigError, InputError
from onellm.modalities.clip_image import ClipImageInput, ClipPatchTokenizer, to_image_tensor
from onellm.modalities.image_reader import image_files
from onellm.modalities.video_reader import (
    CLIP_SECONDS,
    VIDEO_SUFFIXES,
    evenly,
    is_video_file,
    read_video,
)
from onellm.modeling.media_limits import check_decode, check_pixels, max_frames, read_npy
from onellm.modeling.modality import EncoderInfo, as_path, check_readable
from onellm.registry import MODALITIES

STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def load_frames(name: str, raw: Any) -> Sequence[Any]:
    """Split a raw video into a sequence of raw frames (a GIF's are decoded when indexed)."""
    path = as_path(raw)
    if path is not None:
        if path.is_dir():
            return image_files(name, path)
        check_readable(name, path, (".gif", ".npy", *VIDEO_SUFFIXES))
        if path.suffix.lower() == ".npy":
            return read_npy(name, path)
        return GifFrames(name, path)
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise InputError(f"{name}: expected at least one frame, got an empty list")
        return list(raw)
    if isinstance(raw, (np.ndarray, torch.Tensor)) and raw.ndim == 4:
        return raw
    shape = tuple(getattr(raw, "shape", ()))
    raise InputError(
        f"{name}: expected frames (folder, GIF, list, or a (T, H, W, 3) array), "
        f"got {type(raw).__name__} {shape}"
    )


class GifFrames(Sequence):
    """An animated GIF's frames as RGB PIL images, each decoded when it is asked for: only
    one canvas is held, never every frame. Its size and frame count are checked first
    (ONELLM_MAX_PIXELS, ONELLM_MAX_DECODE_MB as RGBA, ONELLM_MAX_FRAMES)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path, label = name, path, repr(str(path))
        try:
            with Image.open(path, formats=("GIF",)) as im:
                check_pixels(name, *im.size, label)
                check_decode(name, im.size, "RGBA", label)
                self.count = im.n_frames  # frame headers read; nothing decoded
        except (InputError, ConfigError):  # a bad limit setting, too
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{name}: expected a GIF file, got unreadable {label}: {e}") from e
        if self.count > max_frames():
            raise InputError(
                f"{name}: expected at most {max_frames():,} frames (ONELLM_MAX_FRAMES), "
                f"got {self.count:,} in {label}"
            )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Image.Image:  # type: ignore[override]
        return next(self.take([i]))

    def take(self, indices: Sequence[int]) -> Iterator[Image.Image]:
        """The frames at `indices` (non-decreasing), decoded in one pass."""
        with Image.open(self.path, formats=("GIF",)) as im:
            for i in indices:
                im.seek(int(i))  # decodes the frames before it, one canvas at a time
                yield im.convert("RGB")


def taken(frames: Sequence[Any], n: int) -> Iterator[Any]:
    """`n` frames taken evenly from first to last."""
    idx = evenly(len(frames), n)
    return frames.take(idx) if isinstance(frames, GifFrames) else (frames[i] for i in idx)


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
    upload = "video"  # the file a user uploads (serve: its part type and player)

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
            frames = read_video(self.name, raw, self.frames, self.clip_seconds, fit=self.size)
            return torch.stack([self.image(f) for f in frames])
        frames = load_frames(self.name, raw)
        if not len(frames):
            raise InputError(f"{self.name}: expected at least one frame, got none")
        return torch.stack([self.image(f) for f in taken(frames, self.frames)])

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return MotionPatchTokenizer(encoder) if self.motion else ClipPatchTokenizer()

    def write(self, raw: Any, stem: Path) -> Path:
        """The frames the model takes from `raw` as an H.264 mp4 (lossless RGB), one a
        second: OneLLM's clip starts then land on them, so the file reads as `raw` does."""
        frames = load_frames(self.name, raw)
        frames = [to_image_tensor(self.name, f) for f in taken(frames, self.frames)]
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
