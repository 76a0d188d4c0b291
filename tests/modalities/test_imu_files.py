"""IMU recordings as people have them: CSVs with and without a header, timestamps in any
unit and at any rate (resampled to the model's 200 Hz), arrays at a stated rate."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from onellm.errors import InputError
from onellm.modalities.imu import IMUModality

RATE = 200.0
t = np.arange(600) / RATE  # 3 s
# accelerometer x, y, z then gyroscope x, y, z: slow sines, so resampling keeps them
SIGNAL = np.stack([np.sin(2 * np.pi * (0.5 + k / 4) * t + k) for k in range(6)], 1)
SIGNAL = SIGNAL.astype(np.float32)  # (N, 6)
EGO4D = "component_idx,component_timestamp_ms,canonical_timestamp_ms,gyro_x,gyro_y,gyro_z,accl_x,accl_y,accl_z"


@pytest.fixture
def imu():
    return IMUModality(length=128)


@pytest.fixture
def reference(imu):
    return imu.preprocess(SIGNAL)


def write_csv(path, rows, header=None):
    np.savetxt(path, rows, delimiter=",", header=header or "", comments="", fmt="%.9g")
    return path


def test_an_ego4d_csv_with_a_header_reads_as_the_array(tmp_path, imu, reference):
    ms = 1.7e12 + t * 1000  # canonical ms since the epoch
    rows = np.c_[np.zeros_like(t), t * 1000, ms, SIGNAL[:, 3:], SIGNAL[:, :3]]  # gyro first
    path = write_csv(tmp_path / "ego4d.csv", rows, EGO4D)
    torch.testing.assert_close(imu.preprocess(path), reference, atol=1e-5, rtol=0)


def test_headerless_csvs_with_and_without_a_time_column(tmp_path, imu, reference):
    six = write_csv(tmp_path / "six.csv", SIGNAL)
    seven = write_csv(tmp_path / "seven.csv", np.c_[100.0 + t, SIGNAL])  # seconds
    torch.testing.assert_close(imu.preprocess(six), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(imu.preprocess(seven), reference, atol=1e-5, rtol=0)


def test_a_header_without_sensor_names_keeps_file_order(tmp_path, imu, reference):
    path = write_csv(tmp_path / "plain.csv", np.c_[t, SIGNAL], "time,a,b,c,d,e,f")
    torch.testing.assert_close(imu.preprocess(path), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("rate", "unit", "column"),
    [(100.0, 1e-9, "ts"), (50.0, 1e-3, "time"), (400.0, 1.0, "timestamp_s"), (800.0, 1e-6, "t")],
)
def test_other_rates_and_units_are_resampled_to_200_hz(
    tmp_path, imu, reference, rate, unit, column
):
    n = int(3 * rate)
    jitter = np.random.default_rng(0).uniform(-0.1, 0.1, n) / rate  # +-10% of a step
    jitter[[0, -1]] = 0
    times = np.arange(n) / rate + jitter
    sig = np.stack([np.sin(2 * np.pi * (0.5 + k / 4) * times + k) for k in range(6)], 1)
    header = f"{column},accl_x,accl_y,accl_z,gyro_x,gyro_y,gyro_z"
    path = write_csv(tmp_path / "r.csv", np.c_[5000 + times / unit, sig], header)
    out = imu.preprocess(path)
    assert out.shape == reference.shape
    assert float((out - reference).abs().max()) < 0.05  # the sines, within resampling error


def test_an_array_at_a_stated_rate_is_resampled_by_soxr(imu, reference):
    fast = soxr.resample(SIGNAL.astype(np.float64), RATE, 400.0).astype(np.float32)
    out = imu.preprocess(fast, sample_rate=400.0)
    assert float((out - reference).abs().max()) < 0.02
    torch.testing.assert_close(imu.preprocess(SIGNAL.T), reference)  # (6, N) as (N, 6)


def _write(d, name, text):
    (d / name).write_text(text)
    return d / name


def _decreasing(d):
    return write_csv(d / "d.csv", np.c_[t[::-1], SIGNAL], "time,a,b,c,d,e,f")


HOSTILE = {  # name -> (make the file, what the message says)
    "missing": (lambda d: d / "none.csv", "readable file, got .*none.csv.*no such file"),
    "empty": (lambda d: _write(d, "e.csv", ""), r"IMU samples in .*e\.csv', got none"),
    "header only": (lambda d: _write(d, "h.csv", "time,ax,ay,az,gx,gy,gz\n"), "IMU samples"),
    "text rows": (lambda d: _write(d, "x.csv", "a,b\nc,d\n"), "a numeric IMU CSV, got unreadable"),
    "ragged rows": (
        lambda d: _write(d, "r.csv", "1,2,3,4,5,6\n1,2,3\n"),
        "a numeric IMU CSV, got unreadable",
    ),
    "five channels": (
        lambda d: write_csv(d / "5.csv", np.c_[t, SIGNAL[:, :5]], "time,a,b,c,d,e"),
        r"6 channel columns .* got \['a', 'b', 'c', 'd', 'e'\]",
    ),
    "decreasing timestamps": (_decreasing, "increasing timestamps"),
    "a rate no unit fits": (
        lambda d: write_csv(d / "slow.csv", np.c_[np.arange(600) * 1e-5, SIGNAL]),
        "timestamps whose step is a rate of 5-5000 Hz",
    ),
    "NaN sample": (
        lambda d: write_csv(d / "n.csv", np.where(t[:, None] > 1, np.nan, SIGNAL)),
        "finite IMU samples, got NaN",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_imu_file_is_an_input_error_and_changes_nothing(unchanged, tmp_path, case):
    make, says = HOSTILE[case]
    with pytest.raises(InputError, match="^imu: expected") as e:
        unchanged.preprocess(make(tmp_path), "imu")
    assert e.match(says)
