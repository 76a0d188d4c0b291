"""Audio: 16 kHz waveform -> Kaldi-style log-mel fbank (1, mel_bins, frames), normalised.

As OneLLM (and AST): mean-removed waveform, 25 ms Hann frames every 10 ms, `mel_bins`
mel bins, no dither, no energy; padded or cut to `frames`; `(x + 4.2677393) / (2 *
4.5689974)`. The fbank is transformers' `ASTFeatureExtractor` (the same Kaldi recipe).
Tokens: a Conv2d patch embed (kernel 16, stride 10) and a learned positional embedding.

Files are read by the library made for each kind, never by hand:

- audio files (.wav .flac .ogg .oga .mp3) by `soundfile`: libsndfile decodes them exactly,
  with every PCM/float subtype (wav 8/16/24/32-bit int, 32/64-bit float) scaled to [-1, 1];
- audio inside a container (.mp4 .m4a .mov .mkv .webm .avi .aac .opus) by PyAV (FFmpeg):
  the first audio stream, whatever its codec (AAC, Opus, Vorbis, MP3, PCM, ...).

Either way channels are averaged to mono and the waveform is resampled to 16 kHz by
`soxr` (libsoxr's band-limited resampler). Only the first `frames` of audio (plus a
resampler margin) are decoded, so an hour-long or decompression-bomb file costs what ten
seconds do. Any unreadable, empty or non-finite input is an `InputError` naming the file.
"""

from __future__ import annotations

import numbers
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import soxr
import torch
from einops import rearrange
from torch import nn
from transformers import ASTFeatureExtractor

from onellm.data.draw import Scene
from onellm.data.language import PATTERNS, PITCHES
from onellm.errors import InputError
from onellm.modeling.media_limits import check_bytes, max_array_bytes
from onellm.modeling.modality import EncoderInfo, as_float_array, as_path, check_readable
from onellm.modeling.positions import sincos_2d, with_class_slot
from onellm.registry import MODALITIES

SAMPLE_RATE = 16000
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3")
CONTAINER_SUFFIXES = (".mp4", ".m4a", ".mov", ".mkv", ".webm", ".avi", ".aac", ".opus")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + CONTAINER_SUFFIXES
MAX_CHANNELS = 8  # a 2-D array is (channels, N) or (N, channels) only if one side is <= this
RESAMPLER_MARGIN = 0.25  # seconds decoded past what is kept, so the resampler's tail is exact
WAVEFORM = "a mono waveform (N,) or a (channels, N) / (N, channels) array"


def read_audio(name: str, path: Any, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """An audio or video file -> (mono float32 waveform (N,), its sample rate).

    At most the first `seconds` are decoded (all when None).
    """
    p = check_readable(name, as_path(path), AUDIO_SUFFIXES)
    suffix = p.suffix.lower()
    if suffix in SOUNDFILE_SUFFIXES:
        what = "a PCM .wav file" if suffix == ".wav" else f"a {suffix} audio file"
        try:
            x, rate = _read_soundfile(name, p, seconds)
        except InputError:
            raise
        except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError) as e:
            raise InputError(f"{name}: expected {what}, got unreadable {p.name!r}: {e}") from e
    else:
        what = f"a {suffix} file with an audio stream"
        try:
            x, rate = _read_container(name, p, seconds)
        except InputError:
            raise
        except (av.error.FFmpegError, OSError, RuntimeError) as e:
            raise InputError(f"{name}: expected {what}, got unreadable {p.name!r}: {e}") from e
    if x.size == 0:
        raise InputError(f"{name}: expected audio samples in {p.name!r}, got an empty stream")
    if rate <= 0:
        raise InputError(f"{name}: expected a positive sample rate in {p.name!r}, got {rate}")
    if not np.isfinite(x).all():
        raise InputError(f"{name}: expected finite samples in {p.name!r}, got NaN or Inf")
    return x.mean(axis=0, dtype=np.float32), rate  # (channels, N) -> (N,)


def _read_soundfile(name: str, p: Path, seconds: float | None) -> tuple[np.ndarray, int]:
    """(channels, N) float32 in [-1, 1] (floats as stored) and the rate, by libsndfile;
    what the header says would be read is checked against ONELLM_MAX_ARRAY_MB first."""
    with soundfile.SoundFile(p) as f:
        frames = (
            f.frames if seconds is None else min(f.frames, int(np.ceil(seconds * f.samplerate)))
        )
        what = f"{frames:,} frames x {f.channels} channels at {f.samplerate} Hz as float32"
        check_bytes(name, frames * f.channels * 4, what, repr(p.name))
        x = f.read(frames, dtype="float32", always_2d=True)
        return x.T, f.samplerate


def _read_container(name: str, p: Path, seconds: float | None) -> tuple[np.ndarray, int]:
    """The first audio stream's (channels, N) float32 and rate, by PyAV."""
    with av.open(str(p)) as container:
        if not container.streams.audio:
            raise InputError(f"{name}: expected an audio stream in {p.name!r}, got none")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        limit = None if seconds is None else int(np.ceil(seconds * rate))
        channels = stream.codec_context.channels or 1
        if limit is not None:
            what = f"{limit:,} frames x {channels} channels at {rate} Hz as float32"
            check_bytes(name, limit * channels * 4, what, repr(p.name))
        cap = max_array_bytes()
        to_float = av.AudioResampler(format="fltp")  # any sample format -> planar float32
        chunks, n = [], 0
        for frame in container.decode(stream):
            for f in to_float.resample(frame):
                chunks.append(f.to_ndarray())
                n += chunks[-1].shape[1]
            if limit is not None and n >= limit:
                break
            if n * channels * 4 > cap:  # no limit asked: the whole stream, bounded
                check_bytes(name, n * channels * 4, "its audio decoded so far", repr(p.name))
        else:
            chunks += [f.to_ndarray() for f in to_float.resample(None)]
    if not chunks:
        return np.zeros((1, 0), np.float32), rate
    x = np.concatenate(chunks, axis=1)
    return (x if limit is None else x[:, :limit]), rate


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) at `rate` Hz -> (round(N * target / rate),) float32 at `target` Hz, by soxr (HQ)."""
    if rate == target:
        return x
    return soxr.resample(x, rate, target).astype(np.float32, copy=False)


def as_mono(name: str, raw: Any) -> np.ndarray:
    """A waveform array (N,), (channels, N) or (N, channels) -> (N,) float32, channels averaged."""
    wav = as_float_array(name, raw, WAVEFORM).squeeze()
    if wav.ndim == 2:
        small = [i for i, n in enumerate(wav.shape) if n <= MAX_CHANNELS]
        if len(small) == 1:
            return wav.mean(axis=small[0], dtype=np.float32)
    if wav.ndim != 1:
        raise InputError(
            f"{name}: expected {WAVEFORM} with at most {MAX_CHANNELS} channels, "
            f"got shape {wav.shape}"
        )
    return wav


class AudioTokenizer(nn.Module):
    """(B, 1, mel, frames) -> (B, 1, S, W) by a strided Conv2d; S = grid_mel * grid_time."""

    def __init__(self, *, width: int, grid: tuple[int, int], kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=kernel, stride=stride)
        self.position_embedding = nn.Parameter(with_class_slot(sincos_2d(*grid, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        return rearrange(self.proj(x), "b w h t -> b 1 (h t) w")


class AudioModality:
    """Log-mel fbank of a mono waveform: (1, mel_bins, frames)."""

    name = "audio"
    upload = "audio"  # the file a user uploads (serve: its part type and player)

    def __init__(
        self,
        *,
        mel_bins: int = 128,
        frames: int = 1024,
        kernel: int = 16,
        stride: int = 10,
        mean: float = -4.2677393,
        std: float = 4.5689974,
    ) -> None:
        if mel_bins < kernel or frames < kernel:
            raise InputError(
                f"{self.name}: mel_bins and frames must be >= kernel {kernel}, got {mel_bins}, {frames}"
            )
        self.mel_bins, self.frames, self.kernel, self.stride = mel_bins, frames, kernel, stride
        self.mean, self.std = mean, std

    @cached_property
    def _fbank(self) -> ASTFeatureExtractor:
        with warnings.catch_warnings():
            # at 128 bins over 257 FFT bins the lowest Kaldi filters are empty; AST has the same
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero")
            return ASTFeatureExtractor(
                num_mel_bins=self.mel_bins,
                max_length=self.frames,
                mean=self.mean,
                std=self.std,
                sampling_rate=SAMPLE_RATE,
            )

    def input_shape(self) -> tuple[int | None, ...]:
        return (1, self.mel_bins, self.frames)

    def grid(self) -> tuple[int, int]:
        """Patches along (mel, time)."""
        side = lambda n: (n - self.kernel) // self.stride + 1  # noqa: E731
        return side(self.mel_bins), side(self.frames)

    def preprocess(self, raw: Any, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """An audio/video file path, or a waveform (numpy/tensor/list) at `sample_rate` Hz:
        mono (N,), or (channels, N) / (N, channels) with at most 8 channels (averaged)."""
        keep = self.frames * 160 + 240  # samples at 16 kHz that make exactly `frames` frames
        if as_path(raw) is not None:
            wav, sample_rate = read_audio(self.name, raw, keep / SAMPLE_RATE + RESAMPLER_MARGIN)
        else:
            wav = as_mono(self.name, raw)
        # Kaldi fbank removes each frame's DC offset, so keeping only the first `frames`
        # frames' samples (here and in read_audio) gives the same features as the whole clip
        wav = resample(wav, sample_rate)[:keep]
        if len(wav) < 400:  # one 25 ms frame
            raise InputError(
                f"{self.name}: expected at least 25 ms of audio, got {len(wav)} samples"
            )
        wav = wav - wav.mean()
        feats = self._fbank(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"]
        return feats[0].T.unsqueeze(0).float()  # (frames, mel) -> (1, mel, frames)

    def is_sample(self, raw: Any) -> bool:
        """A non-empty list of numbers is one waveform, not a batch (chat's inputs)."""
        return (
            isinstance(raw, list)
            and bool(raw)
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in raw)
        )

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return AudioTokenizer(
            width=encoder.width, grid=self.grid(), kernel=self.kernel, stride=self.stride
        )

    def write(self, raw: Any, stem: Path, sample_rate: int = SAMPLE_RATE) -> Path:
        """A waveform as a 24-bit FLAC (lossless) at its own rate."""
        path = Path(stem).with_suffix(".flac")
        wav = np.clip(as_mono(self.name, raw), -1.0, 1.0)
        soundfile.write(path, wav, sample_rate, subtype="PCM_24")
        return path

    def captions(self) -> list[str]:
        return [f"a {p} {q} tone" for p in PITCHES for q in PATTERNS]

    def render(self, rng: np.random.Generator) -> Scene:
        """A tone, low (~400 Hz) or high (~2.4 kHz), steady / rising / falling / beeping."""
        pitch, pattern = rng.choice(PITCHES), rng.choice(PATTERNS)
        seconds = (self.frames * 160 + 240) / SAMPLE_RATE  # just enough samples for `frames`
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = (400.0 if pitch == "low" else 2400.0) * rng.uniform(0.9, 1.1)
        sweep = {"rising": 1.8, "falling": 1 / 1.8}.get(pattern, 1.0)
        freq = f0 * sweep ** (t / t[-1])  # exponential glide
        wave = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
        if pattern == "beeping":
            wave *= np.floor(t * rng.uniform(7, 9)) % 2 == 0
        wave = 0.5 * wave + rng.normal(0, 0.01, len(t))
        return Scene(
            input=wave.astype(np.float32),
            caption=f"a {pitch} {pattern} tone",
            qa=[("Is it low or high?", pitch), ("How does it sound?", pattern)],
            attrs={"pitch": pitch, "pattern": pattern},
        )


MODALITIES.register("audio", AudioModality)
