"""IMU: 3-axis accelerometer + 3-axis gyroscope, (6, length) at 200 Hz (OneLLM: 2 s = 400).

Raw forms: a (6, N) or (N, 6) array / tensor, or a .npy/.csv/.txt file of one. Longer
recordings are centre-cropped, shorter ones zero-padded to `length`. Tokens: a Conv1d
(kernel 10, stride 1, no bias) and a learned positional embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from onellm.data.draw import Scene
from onellm.data.language import ACTIVITIES
from onellm.errors import InputError
from onellm.modality import MODALITIES, EncoderInfo, as_float_array, as_path, load_array_file
from onellm.positions import sincos_1d, with_class_slot


class IMUTokenizer(nn.Module):
    """(B, 6, L) -> (B, 1, L - kernel + 1, W)."""

    def __init__(self, *, width: int, channels: int, length: int, kernel: int) -> None:
        super().__init__()
        self.proj = nn.Conv1d(channels, width, kernel_size=kernel, bias=False)
        self.position_embedding = nn.Parameter(
            with_class_slot(sincos_1d(length - kernel + 1, width))
        )

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        return rearrange(self.proj(x), "b w s -> b 1 s w")


class IMUModality:
    name = "imu"
    channels = 6

    def __init__(self, *, length: int = 400, kernel: int = 10) -> None:
        if length < kernel:
            raise InputError(f"{self.name}: length must be >= kernel {kernel}, got {length}")
        self.length, self.kernel = length, kernel

    def input_shape(self) -> tuple[int | None, ...]:
        return (self.channels, self.length)

    def preprocess(self, raw: Any) -> torch.Tensor:
        path = as_path(raw)
        if path is not None:
            raw = load_array_file(self.name, path)
        x = as_float_array(self.name, raw, "a (6, N) or (N, 6) array")
        if x.ndim != 2 or self.channels not in x.shape:
            raise InputError(f"{self.name}: expected a (6, N) or (N, 6) array, got shape {x.shape}")
        if x.shape[0] != self.channels:
            x = x.T
        n = x.shape[1]
        if n >= self.length:
            start = (n - self.length) // 2
            x = x[:, start : start + self.length]
        else:
            x = np.pad(x, ((0, 0), (0, self.length - n)))
        return torch.from_numpy(np.ascontiguousarray(x))

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return IMUTokenizer(
            width=encoder.width, channels=self.channels, length=self.length, kernel=self.kernel
        )

    def render(self, rng: np.random.Generator, rate: float = 200.0) -> Scene:
        """Accelerometer (m/s^2) + gyroscope (rad/s) of standing, walking, running or turning."""
        activity = rng.choice(ACTIVITIES)
        t = np.arange(self.length) / rate
        phase = rng.uniform(0, 2 * np.pi)
        x = rng.normal(0, 0.05, (6, self.length))
        x[2] += 9.81  # gravity on the vertical axis
        if activity in ("walking", "running"):
            freq, amp = (2.0, 2.0) if activity == "walking" else (3.2, 6.0)
            freq *= rng.uniform(0.9, 1.1)
            x[2] += amp * np.sin(2 * np.pi * freq * t + phase)
            x[0] += 0.4 * amp * np.sin(2 * np.pi * freq * t + phase + 1.0)
            x[4] += 0.1 * amp * np.sin(2 * np.pi * freq * t + phase)
        elif activity == "turning":
            x[5] += rng.choice([-1.0, 1.0]) * rng.uniform(1.2, 1.8)
            x[0] += 0.3 * np.sin(2 * np.pi * 0.8 * t + phase)
        return Scene(
            input=x.T.astype(np.float32),
            caption=f"a person {activity}",
            qa=[("What is the person doing?", activity)],
            attrs={"activity": activity},
        )


MODALITIES.register("imu", IMUModality)
