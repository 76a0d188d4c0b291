"""ECG: a one-lead electrocardiogram, a 1-D modality written outside the onellm package.

The plug-in a new user writes from the README's "add a modality in one file": how raw
input becomes a tensor (`preprocess`), its tokenizer (a strided 1-D convolution into the
universal encoder's width, with its own positions), a synthetic renderer, and the one call
that registers it (`MODALITIES.register("ecg", ECGModality)`).

Raw forms: a 1-D array / tensor of millivolts at `rate` Hz (default 100), or a .npy /
.csv / .txt file of one. Longer recordings are centre-cropped, shorter ones zero-padded to
`length` samples; the baseline (median) is removed and the signal scaled to unit
variance, so any gain reads the same.

Synthetic heartbeats (P wave, QRS complex, T wave per beat) are slow (45-60 beats a
minute) or fast (110-140), steady or irregular (each interval 0.6-1.4x the mean):
"a slow irregular heartbeat", "a fast steady heartbeat". Its words ("heartbeat",
"irregular", "slow", "fast") are none of the shapes world's, so the demo's frozen tiny
LLM has never said them: the stage start warns, and add_ecg.yaml (beside this file)
trains the LLM's LoRA beside the new parts (docs/adding-a-modality.md).

Found from YAML as `type: examples/ecg/onellm_ecg.py` (a file), or as `ecg` once installed
(`pip install -e examples/ecg`: its pyproject declares the entry point).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from onellm.data.draw import Scene
from onellm.errors import InputError
from onellm.modeling.modality import EncoderInfo, as_float_array, as_path, load_array_file
from onellm.modeling.positions import sincos_1d, with_class_slot
from onellm.registry import MODALITIES

RATES = {"slow": (45.0, 60.0), "fast": (110.0, 140.0)}  # beats a minute
RHYTHMS = ("steady", "irregular")
# one beat: (amplitude mV, centre s after the R peak, width s) of the P, Q, R, S, T waves
WAVES = ((0.15, -0.20, 0.025), (-0.10, -0.03, 0.010), (1.0, 0.0, 0.012), (-0.20, 0.03, 0.010), (0.30, 0.25, 0.050))  # fmt: skip


class ECGTokenizer(nn.Module):
    """(B, 1, L) -> (B, 1, L / patch, W): strided convolution + learned positions."""

    def __init__(self, *, width: int, length: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv1d(1, width, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Parameter(with_class_slot(sincos_1d(length // patch, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        return rearrange(self.proj(x), "b w s -> b 1 s w")


class ECGModality:
    name = "ecg"

    def __init__(self, *, length: int = 512, patch: int = 16, rate: float = 100.0) -> None:
        if length % patch:
            raise InputError(f"{self.name}: length {length} must be a multiple of patch {patch}")
        if rate <= 0:
            raise InputError(f"{self.name}: rate must be > 0 Hz, got {rate}")
        self.length, self.patch, self.rate = length, patch, rate

    def input_shape(self) -> tuple[int | None, ...]:
        return (1, self.length)

    def preprocess(self, raw: Any) -> torch.Tensor:
        """A 1-D recording at `rate` Hz -> (1, length), baseline removed, unit amplitude."""
        path = as_path(raw)
        if path is not None:
            raw = load_array_file(self.name, path)
        x = as_float_array(self.name, raw, "a 1-D array of millivolts")
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)  # a (N, 1) column or a (1, N) row
        if x.ndim != 1 or len(x) < self.patch:
            raise InputError(
                f"{self.name}: expected a 1-D recording of at least {self.patch} samples, "
                f"got shape {x.shape}"
            )
        n = len(x)
        if n >= self.length:
            start = (n - self.length) // 2
            x = x[start : start + self.length]
        x = x - np.median(x)
        x = x / max(float(x.std()), 1e-3)  # unit variance: the beats' peaks stand at ~3-6
        x = np.pad(x, (0, self.length - len(x)))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return ECGTokenizer(width=encoder.width, length=self.length, patch=self.patch)

    def captions(self) -> list[str]:
        """Every caption `render` gives."""
        return [f"a {r} {h} heartbeat" for r in RATES for h in RHYTHMS]

    def write(self, raw: Any, stem: Path) -> Path:
        """The recording as the .npy a device SDK or `np.save` writes."""
        path = Path(stem).with_suffix(".npy")
        np.save(path, as_float_array(self.name, raw, "a 1-D array of millivolts").reshape(-1))
        return path

    def render(self, rng: np.random.Generator) -> Scene:
        rate, rhythm = str(rng.choice(list(RATES))), str(rng.choice(RHYTHMS))
        mean = 60.0 / rng.uniform(*RATES[rate])  # seconds between beats
        seconds = self.length / self.rate
        beats, t = [], rng.uniform(0, mean)
        while t < seconds + 0.5:
            beats.append(t)
            t += mean * (
                rng.uniform(0.6, 1.4) if rhythm == "irregular" else rng.uniform(0.97, 1.03)
            )
        time = np.arange(self.length) / self.rate
        x = 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * time + rng.uniform(0, 6.3))
        for b in beats:
            for amp, at, width in WAVES:
                x += amp * np.exp(-0.5 * ((time - b - at) / width) ** 2)
        x = rng.uniform(0.5, 2.0) * x + rng.normal(0, 0.02, self.length)  # gain, noise
        return Scene(
            input=x.astype(np.float32),
            caption=f"a {rate} {rhythm} heartbeat",
            qa=[("Is it slow or fast?", rate), ("Is it steady or irregular?", rhythm)],
            attrs={"rate": rate, "rhythm": rhythm},
        )


MODALITIES.register("ecg", ECGModality)
