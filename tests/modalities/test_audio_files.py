"""Real audio files, each written by its own library, read back through audio's preprocess.

One known waveform (a 440 Hz tone + a little noise, 1.5 s, 22050 Hz, stereo) is written as
every format; what preprocess makes of the file is compared with what it makes of the same
waveform given as an array. The tiny model keeps 96 frames (0.975 s), so every file is also
read past what is decoded (its first 0.975 s + a 0.25 s resampler margin).

Tolerances are on the (1, 36, 96) normalised fbank, measured on this machine (libsndfile
1.2.2, PyAV 18.1 / FFmpeg) and set with headroom: lossless formats a few times what was
measured; lossy ones by correlation and mean abs difference. For scale, a 880 Hz tone
against the 440 Hz reference gives correlation 0.15 and mean abs difference 0.29.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from onellm.errors import InputError
from onellm.modalities.audio import AudioModality, resample

RATE = 22050
rng = np.random.default_rng(0)
_t = np.arange(int(1.5 * RATE)) / RATE
STEREO = (  # (2, N): the same tone on both channels, shifted in phase and level
    np.stack([0.5 * np.sin(2 * np.pi * 440 * _t), 0.4 * np.sin(2 * np.pi * 440 * _t + 0.3)])
    + rng.normal(0, 0.01, (2, len(_t)))
).astype(np.float32)
MONO = STEREO.mean(axis=0)


@pytest.fixture
def audio(tiny_model):
    return tiny_model.modalities["audio"]


@pytest.fixture
def reference(audio):
    return audio.preprocess(MONO, sample_rate=RATE)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


# subtype -> (max abs, mean abs) bound vs the unquantised reference; measured in comments
WAV_SUBTYPES = {
    "PCM_U8": (0.25, 0.03),  # measured max 0.10, mean 0.012 (8-bit quantisation noise)
    "PCM_16": (2e-3, 2e-4),  # measured max 3.7e-4, mean 4.6e-5
    "PCM_24": (5e-5, 5e-6),  # measured max 4.7e-6, mean 4.8e-7
    "PCM_32": (1e-5, 1e-6),  # measured 0 (exact)
    "FLOAT": (1e-5, 1e-6),  # measured 0 (exact)
    "DOUBLE": (1e-5, 1e-6),  # measured 0 (exact)
}


@pytest.mark.parametrize("subtype", sorted(WAV_SUBTYPES))
def test_wav_subtypes_read_as_the_array(tmp_path, audio, reference, subtype):
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, STEREO.T, RATE, subtype=subtype)
    diff = (audio.preprocess(path) - reference).abs()
    max_bound, mean_bound = WAV_SUBTYPES[subtype]
    assert diff.max() < max_bound and diff.mean() < mean_bound


@pytest.mark.parametrize(
    ("subtype", "max_bound"),
    [("PCM_16", 2e-3), ("PCM_24", 5e-5)],  # measured max 4.1e-4 and 5.2e-6
)
def test_flac_is_lossless(tmp_path, audio, reference, subtype, max_bound):
    sf.write(tmp_path / "a.flac", STEREO.T, RATE, format="FLAC", subtype=subtype)
    assert (audio.preprocess(tmp_path / "a.flac") - reference).abs().max() < max_bound


@pytest.mark.parametrize(
    ("name", "fmt", "subtype", "rate", "min_corr", "max_mean"),
    [  # measured: vorbis corr 0.979 mean 0.081; opus 0.998, 0.015; mp3 0.996, 0.023
        ("a.ogg", "OGG", "VORBIS", RATE, 0.95, 0.15),
        ("b.ogg", "OGG", "OPUS", 48000, 0.98, 0.05),  # Opus runs at 48 kHz
        ("a.mp3", "MP3", "MPEG_LAYER_III", RATE, 0.98, 0.05),
    ],
)
def test_lossy_soundfile_formats_are_close(
    tmp_path, audio, reference, name, fmt, subtype, rate, min_corr, max_mean
):
    x = STEREO.T if rate == RATE else soxr.resample(STEREO.T, RATE, rate)
    sf.write(tmp_path / name, x, rate, format=fmt, subtype=subtype)
    got = audio.preprocess(tmp_path / name)
    assert corr(got, reference) > min_corr
    assert (got - reference).abs().mean() < max_mean


def encode(path: Path, codec: str | None, rate: int, fmt: str, video: bool) -> None:
    """Write STEREO (resampled to `rate`) as a `codec` audio stream with PyAV, plus a small
    MPEG-4 video stream when `video`; `codec=None` writes the video alone."""
    with av.open(str(path), "w") as out:
        if video:
            vs = out.add_stream("mpeg4", rate=10)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        if codec is not None:
            s = out.add_stream(codec, rate=rate, layout="stereo", format=fmt)
            y = STEREO if rate == RATE else soxr.resample(STEREO.T, RATE, rate).T
            step = 960 if "opus" in codec else 1024  # the encoders' frame sizes
            for i in range(0, y.shape[1], step):
                chunk = np.ascontiguousarray(y[:, i : i + step], dtype=np.float32)
                if not fmt.endswith("p"):  # packed: (1, N * channels), interleaved
                    chunk = chunk.T.reshape(1, -1).copy()
                frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="stereo")
                frame.sample_rate, frame.pts = rate, i
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
        if video:
            for k in range(15):
                img = np.full((32, 32, 3), 10 * k, np.uint8)
                out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(vs.encode(None))


@pytest.mark.parametrize(
    ("name", "codec", "rate", "fmt", "video"),
    [  # measured: mp4/m4a AAC corr 0.995 mean 0.019; mkv Opus 0.998, 0.017
        ("a.mp4", "aac", RATE, "fltp", True),
        ("a.m4a", "aac", RATE, "fltp", False),
        ("a.mkv", "libopus", 48000, "flt", False),
        ("a.webm", "libopus", 48000, "flt", False),
    ],
)
def test_audio_inside_a_container(tmp_path, audio, reference, name, codec, rate, fmt, video):
    encode(tmp_path / name, codec, rate, fmt, video)
    got = audio.preprocess(tmp_path / name)
    assert corr(got, reference) > 0.98
    assert (got - reference).abs().mean() < 0.05


def test_mixdown_is_the_mean_of_the_channels(tmp_path, audio, reference):
    # a file: stereo FLOAT wav vs the mono mean given as an array
    sf.write(tmp_path / "s.wav", STEREO.T, RATE, subtype="FLOAT")
    torch.testing.assert_close(audio.preprocess(tmp_path / "s.wav"), reference)
    # arrays: (channels, N) and (N, channels) both mean over the channel axis
    torch.testing.assert_close(audio.preprocess(STEREO, sample_rate=RATE), reference)
    torch.testing.assert_close(audio.preprocess(STEREO.T, sample_rate=RATE), reference)
    # and the mix is not one channel alone
    left = audio.preprocess(STEREO[0], sample_rate=RATE)
    assert (left - reference).abs().max() > 0.01


def test_resample_is_soxr_at_16k():
    x = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE).astype(np.float32)
    y = resample(x, RATE)
    assert y.dtype == np.float32 and len(y) == 16000
    np.testing.assert_allclose(y, soxr.resample(x, RATE, 16000), atol=1e-6)
    peak = np.argmax(np.abs(np.fft.rfft(y)))  # 1 Hz bins over 1 s
    assert abs(peak - 440) <= 1
    assert resample(x, 16000) is x


def test_a_long_file_reads_its_first_frames_as_the_whole_array(tmp_path):
    m = AudioModality()  # OneLLM's 1024 frames: 10.24 s, of a 12 s file
    t = np.arange(12 * RATE) / RATE
    x = (0.5 * np.sin(2 * np.pi * 300 * t * (1 + t / 12))).astype(np.float32)  # a glide
    sf.write(tmp_path / "long.wav", x, RATE, subtype="FLOAT")
    got = m.preprocess(tmp_path / "long.wav")
    assert got.shape == (1, 128, 1024)
    torch.testing.assert_close(got, m.preprocess(x, sample_rate=RATE), atol=1e-4, rtol=0)


def test_preprocess_changes_no_state(tmp_path, audio):
    x = STEREO.copy()
    first = audio.preprocess(x, sample_rate=RATE)
    before = dict(vars(audio))
    sf.write(tmp_path / "a.flac", STEREO.T, RATE)
    audio.preprocess(tmp_path / "a.flac")
    torch.testing.assert_close(audio.preprocess(x, sample_rate=RATE), first, atol=0, rtol=0)
    assert np.array_equal(x, STEREO)  # the caller's array is untouched
    assert vars(audio).keys() == before.keys()
    assert all(vars(audio)[k] is v for k, v in before.items())


def test_is_sample_reads_a_list_of_numbers_as_one_waveform(audio):
    assert audio.is_sample([0.0, 0.5, -1, 0.25])
    assert not audio.is_sample([])
    assert not audio.is_sample([[0.0, 1.0], [0.5, 0.5]])
    assert not audio.is_sample(["a.wav", "b.wav"])


# ----------------------------------------------------------------------------- hostile files
def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _wav(tmp_path: Path, name: str, x: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(tmp_path / name, x, RATE, subtype=subtype)
    return tmp_path / name


def _flac_head(tmp_path: Path) -> bytes:
    sf.write(tmp_path / "full.flac", STEREO.T, RATE)
    data = (tmp_path / "full.flac").read_bytes()
    return data[: len(data) // 2]


def _nan(n: int) -> np.ndarray:
    x = np.zeros((n, 2), np.float32)
    x[100, 0] = np.nan
    return x


def _inf(n: int) -> np.ndarray:
    x = np.zeros((n, 2))
    x[100, 1] = np.inf
    return x


HOSTILE = {  # name -> (make the file, what the message says)
    "missing": (lambda d: d / "missing.wav", r"readable file, got .*missing\.wav.*no such file"),
    "directory": (lambda d: (d / "dir.wav").mkdir() or d / "dir.wav", "no such file"),
    "unknown suffix": (
        lambda d: _write(d, "a.xyz", b"x"),
        r"a file ending in \.wav, \.flac, .*\.mp4, .*got .*a\.xyz",
    ),
    "random bytes as .flac": (
        lambda d: _write(d, "r.flac", rng.bytes(4000)),
        r"a \.flac audio file, got unreadable 'r\.flac'",
    ),
    "wav cut to 30 bytes": (
        lambda d: _write(d, "t.wav", _wav(d, "full.wav", MONO).read_bytes()[:30]),
        r"a PCM \.wav file, got unreadable 't\.wav'",
    ),
    "empty .wav": (lambda d: _write(d, "e.wav", b""), r"\.wav file, got unreadable 'e\.wav'"),
    "text as .mp3": (
        lambda d: _write(d, "t.mp3", "this is not an mp3\n" * 50),
        r"a \.mp3 audio file, got unreadable 't\.mp3'",
    ),
    "flac cut in half": (
        lambda d: _write(d, "h.flac", _flac_head(d)),
        r"a \.flac audio file, got unreadable 'h\.flac'",
    ),
    "random bytes as .mp4": (
        lambda d: _write(d, "r.mp4", rng.bytes(4000)),
        r"a \.mp4 file with an audio stream, got unreadable 'r\.mp4'",
    ),
    "zero samples": (
        lambda d: _wav(d, "z.wav", np.zeros((0, 2), np.float32), "FLOAT"),
        r"audio samples in 'z\.wav', got an empty stream",
    ),
    "NaN sample": (
        lambda d: _wav(d, "n.wav", _nan(RATE), "FLOAT"),
        r"finite samples in 'n\.wav', got NaN",
    ),
    "Inf sample": (
        lambda d: _wav(d, "i.wav", _inf(RATE), "DOUBLE"),
        r"finite samples in 'i\.wav', got NaN or Inf",
    ),
    "under 25 ms": (
        lambda d: _wav(d, "s.wav", np.zeros(200, np.float32)),
        "at least 25 ms of audio, got 145 samples",  # 200 at 22050 Hz -> 145 at 16 kHz
    ),
    "video without audio": (
        lambda d: encode(d / "v.mp4", None, RATE, "", video=True) or d / "v.mp4",
        r"^audio: expected an audio stream in 'v\.mp4', got none$",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_an_input_error(tmp_path, audio, case):
    make, says = HOSTILE[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match="^audio: expected") as e:
        audio.preprocess(path)
    assert e.match(says)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (np.zeros((10, 1000)), r"at most 8 channels, got shape \(10, 1000\)"),  # ambiguous
        (np.zeros((2, 2, 1000)), r"got shape \(2, 2, 1000\)"),
        (np.array([0.0, np.inf] * 500), "finite values in a mono waveform"),
        (np.zeros((2, 0)), "empty array"),
    ],
)
def test_hostile_array_is_an_input_error(audio, raw, says):
    with pytest.raises(InputError, match="^audio: expected") as e:
        audio.preprocess(raw)
    assert e.match(says)
