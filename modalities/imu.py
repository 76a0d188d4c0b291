"""IMU: 3-axis accelerometer + 3-axis gyroscope, (6, length) at `rate` Hz (OneLLM: 200 Hz,
2 s = 400 samples).

Raw forms:
- a (6, N) or (N, 6) array / tensor at `sample_rate` Hz (default: the model's `rate`),
  or a `.npy` / `.npz` / `.pt` / `.txt` file of one;
- a (N, 7) array or headerless CSV: a time column first, then the 6 channels;
- a CSV with a header: the time column is the first whose name holds "time" (or is `t` /
  `ts`); the channels are the accelerometer's x, y, z then the gyroscope's, found by name
  (`acc*` / `gyr*` ending in x, y, z: Ego4D's `accl_x ... gyro_z`, Android's, ...), or
  else the remaining 6 columns in file order.

Timestamps: their unit comes from the column name's suffix (`_s`, `_ms`, `_us`, `_ns`);
without one, it is the unit in which the median step is a rate of 5 Hz - 5 kHz (the four
units' ranges do not overlap). As OneLLM's `resampleIMU`, the signal is resampled to
`rate` from its mean rate, by `soxr`; first it is interpolated onto an even grid at that
rate, so jittered or dropped samples do not shift it. Timestamps must increase.

Longer recordings are centre-cropped, shorter ones zero-padded to `length`. Tokens: a
Conv1d (kernel 10, stride 1, no bias) and a learned positional embedding.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from einops import rearrange
from torch import nn

from onellm.data.draw import Scene
from onellm.data.language import ACTIVITIES
from onellm.errors import InputError
from onellm.modeling.modality import (
    EncoderInfo,
    as_float_array,
    as_path,
    check_readable,
    load_array_file,
)
from onellm.modeling.positions import sincos_1d, with_class_slot
from onellm.registry import MODALITIES

CHANNELS = "a (6, N) or (N, 6) array (accelerometer x, y, z, gyroscope x, y, z)"
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
RATES = (5.0, 5000.0)  # Hz: the rates a unit is inferred from


def read_csv(name: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An IMU CSV -> (N, 6) channels and the (N,) timestamps in seconds (None: no time column)."""
    p = check_readable(name, path, (".csv",))
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        cells = [c.strip() for c in first.split(",")]
        header = not all(_is_number(c) for c in cells)
        with warnings.catch_warnings():  # an empty file is our error below, not numpy's warning
            warnings.simplefilter("ignore", UserWarning)
            data = np.loadtxt(p, delimiter=",", skiprows=int(header), dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise InputError(
            f"{name}: expected a numeric IMU CSV, got unreadable {str(p)!r}: {e}"
        ) from e
    if data.size == 0:
        raise InputError(f"{name}: expected IMU samples in {str(p)!r}, got none")
    if not header:
        if data.shape[1] == 6:
            return data, None
        if data.shape[1] == 7:
            return data[:, 1:], seconds(name, data[:, 0], None)
        raise InputError(
            f"{name}: expected 6 columns (or a time column and 6) in {str(p)!r}, got {data.shape[1]}"
        )
    return _by_name(name, p, [c.lower() for c in cells], data)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _by_name(name: str, p: Path, names: list[str], data: np.ndarray):
    if data.shape[1] != len(names):
        raise InputError(
            f"{name}: expected {len(names)} columns per row in {str(p)!r}, got {data.shape[1]}"
        )
    time = next((i for i, n in enumerate(names) if "time" in n or n in ("t", "ts")), None)
    found = [_axes(names, kind) for kind in ("acc", "gyr")]
    if all(found):
        cols = found[0] + found[1]
    else:
        cols = [i for i, n in enumerate(names) if i != time and "time" not in n]
        if len(cols) != 6:
            raise InputError(
                f"{name}: expected 6 channel columns (accelerometer and gyroscope x, y, z) "
                f"besides the time in {str(p)!r}, got {[names[i] for i in cols]}"
            )
    stamps = None if time is None else seconds(name, data[:, time], names[time])
    return data[:, cols], stamps


def _axes(names: list[str], kind: str) -> list[int] | None:
    """The columns of one sensor, ordered x, y, z by their names' last letter, or None."""
    cols = {n[-1]: i for i, n in enumerate(names) if kind in n and n[-1] in "xyz"}
    return [cols[a] for a in "xyz"] if len(cols) == 3 else None


def seconds(name: str, t: np.ndarray, column: str | None) -> np.ndarray:
    """Timestamps in their unit -> seconds from the first (see the module docstring)."""
    step = np.diff(t)
    if len(t) < 2 or not np.all(step > 0):
        raise InputError(f"{name}: expected increasing timestamps, got {t[:6].tolist()} ...")
    suffix = re.search(r"_(s|ms|us|ns)$", column or "")
    if suffix:
        unit = TIME_UNITS[suffix.group(1)]
    else:
        median = float(np.median(step))
        fits = [u for u in TIME_UNITS.values() if RATES[0] <= 1 / (median * u) < RATES[1]]
        if not fits:
            raise InputError(
                f"{name}: expected timestamps whose step is a rate of {RATES[0]:g}-{RATES[1]:g} Hz "
                f"in s, ms, us or ns, got a median step of {median:g}"
            )
        unit = fits[0]
    return (t - t[0]) * unit


def resample(x: np.ndarray, times: np.ndarray | None, rate: float, target: float) -> np.ndarray:
    """(N, 6) at `rate` Hz (or at `times` seconds) -> (M, 6) float32 at `target` Hz."""
    if times is not None:  # an even grid at the mean rate first, as OneLLM's mean-step rate
        rate = (len(times) - 1) / times[-1]
        grid = np.arange(len(times)) / rate
        x = np.stack([np.interp(grid, times, c) for c in x.T], axis=1)
    if abs(rate - target) > 1e-6 * target:
        x = soxr.resample(np.ascontiguousarray(x, dtype=np.float64), rate, target)
    return x.astype(np.float32)


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

    def __init__(self, *, length: int = 400, kernel: int = 10, rate: float = 200.0) -> None:
        if length < kernel:
            raise InputError(f"{self.name}: length must be >= kernel {kernel}, got {length}")
        if rate <= 0:
            raise InputError(f"{self.name}: rate must be > 0 Hz, got {rate}")
        self.length, self.kernel, self.rate = length, kernel, rate

    def input_shape(self) -> tuple[int | None, ...]:
        return (self.channels, self.length)

    def samples(self, raw: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw IMU input -> (N, 6) channels and the (N,) timestamps in seconds, if it has them."""
        path = as_path(raw)
        if path is not None and path.suffix.lower() == ".csv":
            return read_csv(self.name, path)
        if path is not None:
            raw = load_array_file(self.name, path)
        x = as_float_array(self.name, raw, CHANNELS)
        if x.ndim == 2 and x.shape[1] == 7 and x.shape[0] != 6:
            return x[:, 1:], seconds(self.name, x[:, 0].astype(np.float64), None)
        if x.ndim != 2 or self.channels not in x.shape:
            raise InputError(f"{self.name}: expected {CHANNELS}, got shape {x.shape}")
        return (x.T if x.shape[0] == self.channels and x.shape[1] != 6 else x), None

    def preprocess(self, raw: Any, sample_rate: float | None = None) -> torch.Tensor:
        """IMU samples (see the module docstring) -> (6, length) at the model's rate."""
        x, times = self.samples(raw)
        if not np.isfinite(x).all():
            raise InputError(f"{self.name}: expected finite IMU samples, got NaN or Inf")
        x = resample(x, times, sample_rate or self.rate, self.rate).T  # (6, M)
        n = x.shape[1]
        if n >= self.length:
            start = (n - self.length) // 2
            x = x[:, start : start + self.length]
        else:
            x = np.pad(x, ((0, 0), (0, self.length - n)))
        return torch.from_numpy(np.ascontiguousarray(x))

    def write(self, raw: Any, stem: Path) -> Path:
        """Samples at the model's rate as a CSV with a header and timestamps in ms (Ego4D's form)."""
        x, times = self.samples(raw)
        t = np.arange(len(x)) * 1000.0 / self.rate if times is None else times * 1000.0
        path = Path(stem).with_suffix(".csv")
        header = "timestamp_ms,accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"
        np.savetxt(path, np.c_[t, x], delimiter=",", header=header, comments="", fmt="%.9g")
        return path

    def captions(self) -> list[str]:
        return [f"a person {a}" for a in ACTIVITIES]

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
