"""Audio: 16 kHz waveform -> Kaldi-style log-mel fbank (1, mel_bins, frames), normalised.

As OneLLM (and AST): mean-removed waveform, 25 ms Hann frames every 10 ms, `mel_bins`
mel bins, no dither, no energy; padded or cut to `frames`; `(x + 4.2677393) / (2 *
4.5689974)`. The fbank is transformers' `ASTFeatureExtractor` (the same Kaldi recipe).
Tokens: a Conv2d patch embed (kernel 16, stride 10) and a learned positional embedding.
"""

from __future__ import annotations

import warnings
import wave
from functools import cached_property
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn
from transformers import ASTFeatureExtractor

from onellm.data.draw import Scene
from onellm.data.language import PATTERNS, PITCHES
from onellm.errors import InputError
from onellm.modality import MODALITIES, EncoderInfo, as_float_array, as_path, check_readable
from onellm.positions import sincos_2d, with_class_slot

SAMPLE_RATE = 16000


def read_wav(name: str, path: Any) -> tuple[np.ndarray, int]:
    """A PCM .wav file -> (mono float32 waveform in [-1, 1], sample rate)."""
    p = check_readable(name, as_path(path), (".wav",))
    try:
        with wave.open(str(p), "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise InputError(f"{name}: expected a PCM .wav file, got unreadable {str(p)!r}: {e}") from e
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise InputError(f"{name}: expected 8/16/32-bit PCM, got {8 * width}-bit in {str(p)!r}")
    x = np.frombuffer(data, dtype=dtypes[width]).astype(np.float32)
    x = (x - 128.0) / 128.0 if width == 1 else x / float(2 ** (8 * width - 1))
    return x.reshape(-1, channels).mean(axis=1), rate


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by zero-padding/truncating the spectrum (scipy's `resample`)."""
    if rate == target:
        return x
    n = max(1, round(len(x) * target / rate))
    spec = torch.fft.rfft(torch.from_numpy(x).double())
    out = torch.fft.irfft(spec, n=n) if n >= len(x) else torch.fft.irfft(spec[: n // 2 + 1], n=n)
    return (out * (n / len(x))).float().numpy()


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
        """A .wav path, or a mono waveform (numpy/tensor/list) at `sample_rate` Hz."""
        if as_path(raw) is not None:
            wav, sample_rate = read_wav(self.name, raw)
        else:
            wav = as_float_array(self.name, raw, "a mono waveform (N,)").squeeze()
            if wav.ndim != 1:
                raise InputError(
                    f"{self.name}: expected a mono waveform (N,), got shape {wav.shape}"
                )
        wav = resample(wav, sample_rate)
        if len(wav) < 400:  # one 25 ms frame
            raise InputError(
                f"{self.name}: expected at least 25 ms of audio, got {len(wav)} samples"
            )
        wav = wav - wav.mean()
        feats = self._fbank(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"]
        return feats[0].T.unsqueeze(0).float()  # (frames, mel) -> (1, mel, frames)

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return AudioTokenizer(
            width=encoder.width, grid=self.grid(), kernel=self.kernel, stride=self.stride
        )

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
