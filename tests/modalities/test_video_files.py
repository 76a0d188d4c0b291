"""Real video files, each encoded by PyAV in the test, read back through video's preprocess.

Frame i of every test video carries its index in its colour (red = 16 * (i % 16), green =
16 * (i // 16 % 16)), so which frames the reader picked can be read off what it returns.
Frames are smooth colour ramps plus that level, so yuv420 subsampling loses little:
tolerances are on the CLIP-normalised (T, 3, size, size) tensor, measured on this machine
(PyAV 18.1 / FFmpeg) and set with headroom.
"""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from onellm.errors import InputError
from onellm.modalities.video import VideoModality
from onellm.modalities.video_reader import clip_starts, decode_at, read_video

W, H, FPS = 64, 48, 10
CODECS = {  # container -> (codec, max abs error on the normalised frames); measured in comments
    "mp4": ("libx264", 0.1),  # measured 0.047 (yuv420 rounding; crf 0)
    "mov": ("libx264", 0.1),  # measured 0.047
    "mkv": ("libx264", 0.1),  # measured 0.047
    "webm": ("libvpx", 0.2),  # measured 0.071 (lossy VP8 at 8 Mb/s)
    "avi": ("mpeg4", 0.3),  # measured 0.12 (lossy MPEG-4 part 2 at 8 Mb/s)
}


def frame(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (i % 16) * 16
    img[..., 1] = (i // 16 % 16) * 16
    img[..., 2] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]  # a ramp across
    img[:8, :8] = 255  # a corner marker, to see rotations
    return img


def index(img: np.ndarray) -> int:
    r, g = img[20:30, 20:40, 0].mean(), img[20:30, 20:40, 1].mean()
    return int(round(r / 16)) + 16 * int(round(g / 16))


def write(path, n: int, *, codec: str = "libx264", gop: int = 10, rotation=None, options=None):
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        if codec == "libx264":
            s.codec_context.options = {"crf": "0", "preset": "ultrafast"}
        else:
            s.bit_rate = 8_000_000  # near-lossless for the lossy codecs
        if rotation is not None and hasattr(s, "set_display_rotation"):  # PyAV >= 16
            s.set_display_rotation(rotation)
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    if rotation is not None and not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        set_mp4_rotation(path, rotation)
    return path


def set_mp4_rotation(path, degrees: float) -> None:
    """The display matrix of an mp4's video track (its tkhd box) for `degrees`
    counter-clockwise: what PyAV >= 16's set_display_rotation writes, for the PyAV 15 that
    lmms-eval 0.7.3 (the eval extra) pins."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    # version, flags; times, track id, reserved, duration (64-bit in version 1); reserved,
    # layer, alternate group, volume, reserved: then the 3x3 matrix (16.16, last 2.30)
    at += 4 + 4 + (32 if version == 1 else 20) + 16
    rad = np.deg2rad(degrees)
    c, s = (int(round(v * (1 << 16))) for v in (np.cos(rad), np.sin(rad)))
    matrix = [c, -s, 0, s, c, 0, 0, 0, 1 << 30]
    data[at : at + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))


@pytest.fixture
def video():
    return VideoModality(frames=5, size=32)


@pytest.mark.parametrize("ext", sorted(CODECS))
def test_each_container_gives_oneLLMs_clip_frames_as_the_same_tensor_as_the_array(
    video, tmp_path, ext
):
    codec, tol = CODECS[ext]
    path = write(tmp_path / f"clip.{ext}", 100, codec=codec)  # 10 s at 10 fps
    # OneLLM: 5 clips of 1 s starting at i * (10 - 1) / 5 s -> frames 0, 18, 36, 54, 72
    want = [round(t * FPS) for t in clip_starts(10.0, 5)]
    assert want == [0, 18, 36, 54, 72]
    assert [index(f) for f in read_video("video", path, 5)] == want
    x = video.preprocess(path)
    ref = video.preprocess(np.stack([frame(i) for i in want]))
    assert x.shape == ref.shape == (5, 3, 32, 32)
    assert (x - ref).abs().max() < tol
    assert torch.equal(video.preprocess(path.read_bytes()), x)  # bytes, as a server gets them


def test_only_the_frames_it_needs_are_decoded(tmp_path):
    path = write(tmp_path / "long.mp4", 3000, gop=30)  # 5 minutes at 10 fps
    with av.open(str(path)) as c:
        frames, decoded = decode_at("video", "long.mp4", c, c.streams.video[0], clip_starts(300, 5))
    starts = [round(t * FPS) for t in clip_starts(300, 5)]
    assert [index(f) for f in frames] == [s % 256 for s in starts]
    assert decoded <= 5 * 30  # at most one keyframe interval per clip, of 3000 frames


def test_a_video_shorter_than_a_clip_spreads_its_frames(video, tmp_path):
    path = write(tmp_path / "short.mp4", 5)  # 0.5 s: OneLLM would take frame 0 five times
    assert [index(f) for f in read_video("video", path, 5)] == [0, 1, 2, 3, 4]
    # 8 starts i / 16 s: the first frame at or after each, the last frame for the last one
    assert [index(f) for f in read_video("video", path, 8)] == [0, 1, 2, 2, 3, 4, 4, 4]


def test_display_rotation_is_applied(tmp_path):
    path = write(tmp_path / "portrait.mp4", 10, rotation=90)  # shown turned 90 degrees ccw
    f = read_video("video", path, 1)[0]
    assert f.shape == (W, H, 3)
    green = f[..., 1]  # the marker is white, frame 0 has no green elsewhere
    assert green[-8:, :8].min() > 200 and green[:8, :8].max() < 50  # top-left is now bottom-left


def test_frames_given_as_a_list_or_array_are_taken_from_first_to_last(video):
    frames = [frame(i) for i in range(9)]
    x = video.preprocess(frames)
    assert torch.equal(x, video.preprocess(np.stack(frames)))
    assert torch.equal(x, video.preprocess(np.stack([frames[i] for i in (0, 2, 4, 6, 8)])))


def _zero_frames(p):
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        c.start_encoding()  # a header and no frames
    return p


def _cut(p, keep=0.5, **kw):
    write(p, 40, **kw)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    return p


def _audio_only(p):
    sf.write(tmp := p.with_suffix(".wav"), np.zeros(8000, np.float32), 16000)
    with av.open(str(tmp)) as src, av.open(str(p), "w") as dst:
        s = dst.add_stream("aac", rate=16000)
        for f in src.decode(audio=0):
            f.pts = None
            for pkt in s.encode(f):
                dst.mux(pkt)
        for pkt in s.encode():
            dst.mux(pkt)
    return p


HOSTILE = {  # name -> (make(tmp_path) -> raw, the error's pattern)
    "missing file": (lambda d: d / "nope.mp4", "expected a readable file"),
    "text named .mp4": (
        lambda d: (d / "t.mp4").write_text("not a video") and d / "t.mp4",
        "expected a video file, got unreadable",
    ),
    "empty file": (lambda d: (d / "e.mp4").write_bytes(b"") or d / "e.mp4", "unreadable"),
    "zero frames (mp4)": (lambda d: _zero_frames(d / "z.mp4"), "at least one frame|video stream"),
    "zero frames (mkv)": (lambda d: _zero_frames(d / "z.mkv"), "unreadable .*End of file"),
    "truncated (index at the end)": (lambda d: _cut(d / "c.mp4"), "unreadable"),
    "truncated (index first)": (
        lambda d: _cut(d / "f.mp4", 0.3, options={"movflags": "faststart"}),
        # slice threads (video_reader) meet the cut packet; frame threads ran out of frames
        "expected a frame at .* truncated|unreadable .*Invalid data",
    ),
    "audio only": (lambda d: _audio_only(d / "a.mp4"), "expected a video stream .* got none"),
    "a wav named .mp4": (
        lambda d: sf.write(d / "w.mp4", np.zeros(800), 8000, format="WAV") or d / "w.mp4",
        "expected a video stream .* got none",
    ),
    "garbage bytes": (lambda d: b"\x00\x01garbage" * 100, "unreadable"),
    "zero-frame array": (lambda d: np.zeros((0, H, W, 3), np.uint8), "expected at least one frame"),
    "empty list": (lambda d: [], "expected at least one frame"),
    "wrong extension": (
        lambda d: (d / "v.xyz").write_text("x") and d / "v.xyz",
        "expected a file ending in",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_video_is_an_input_error_and_changes_nothing(video, tmp_path, case):
    make, pattern = HOSTILE[case]
    raw = make(tmp_path)
    before = dict(vars(video))
    with pytest.raises(InputError, match=f"^video: .*({pattern})"):
        video.preprocess(raw)
    assert vars(video) == before


def test_frames_over_the_pixel_limit_are_refused_before_decoding(video, tmp_path, monkeypatch):
    path = write(tmp_path / "big.mp4", 3)
    monkeypatch.setenv("ONELLM_MAX_PIXELS", str(W * H - 1))
    with pytest.raises(InputError, match=r"^video: expected an image of at most .* 64 x 48"):
        video.preprocess(path)
