"""Bad input raises InputError naming the modality, what was expected and what was given,
and leaves the model exactly as it was."""

import numpy as np
import pytest
import torch

from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import InputError, OneLLMError
from tests.conftest import random_input


def good(model, modality="image"):
    return random_input(model, modality)


CASES = {
    "unknown modality": (
        lambda m: m.encode(good(m), "smell"),
        r"unknown modality 'smell': expected one of .*image",
    ),
    "wrong shape": (
        lambda m: m.encode(torch.randn(2, 3, 32, 32), "image"),
        r"^image: expected shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)",
    ),
    "wrong rank": (
        lambda m: m.encode(torch.randn(3, 64, 64), "image"),
        r"^image: expected rank 4 \(B, 3, 64, 64\), got rank 3",
    ),
    "wrong dtype": (
        lambda m: m.encode(torch.zeros(2, 6, 64, dtype=torch.long), "imu"),
        r"^imu: expected a floating-point tensor .*got dtype torch.int64",
    ),
    "NaN": (
        lambda m: m.encode(
            good(m, "audio").index_fill(3, torch.tensor([0]), float("nan")), "audio"
        ),
        r"^audio: expected finite values, got NaN or Inf",
    ),
    "Inf": (
        lambda m: m.encode(good(m, "fmri").fill_(float("inf")), "fmri"),
        r"^fmri: expected finite values",
    ),
    "empty": (
        lambda m: m.encode(torch.zeros(0, 1, 48), "fmri"),
        r"^fmri: expected a non-empty tensor",
    ),
    "not a tensor": (
        lambda m: m.encode(np.zeros((2, 1, 48)), "fmri"),
        r"^fmri: expected a tensor of shape \(B, 1, 48\), got ndarray",
    ),
    "wrong frame count for depth": (
        lambda m: m.encode(torch.randn(2, 3, 3, 64, 64), "depth"),
        r"^depth: expected shape \(B, 2, 3, 64, 64\)",
    ),
    "batch mismatch": (
        lambda m: onellm_logits(m, torch.ones(3, 4, dtype=torch.long), good(m), "image"),
        r"^image: expected 3 input\(s\) for the image placeholders in the text, got 2",
    ),
    "input without its placeholders": (
        lambda m: m(torch.ones(2, 4, dtype=torch.long), inputs={"image": good(m)}),
        r"^image: expected a <image> placeholder run in the text for the 2 input\(s\) given",
    ),
    "input and cached features": (
        lambda m: m(
            torch.ones(2, 4, dtype=torch.long),
            inputs={"image": good(m)},
            features={"image": torch.zeros(2, 65, 64)},
        ),
        r"^image: expected an input or its cached features, got both",
    ),
    "empty text": (
        lambda m: onellm_logits(m, torch.ones(2, 0, dtype=torch.long)),
        r"^text: expected input_ids \(B, L\) with L >= 1",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_input(unchanged, case):
    call, message = CASES[case]
    with pytest.raises(InputError, match=message):
        call(unchanged)


def test_unreadable_and_corrupt_files(unchanged, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(
        InputError, match=r"^image: expected an image file .*, got unreadable .*broken.png"
    ):
        unchanged.preprocess(tmp_path / "broken.png", "image")
    with pytest.raises(
        InputError, match=r"^image: expected a readable file, got .*missing.png.*no such file"
    ):
        unchanged.preprocess(tmp_path / "missing.png", "image")
    (tmp_path / "x.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"^imu: expected a .npy array, got unreadable"):
        unchanged.preprocess(tmp_path / "x.npy", "imu")
    (tmp_path / "pickled.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        + b" " * 61  # the header's 118 bytes (v\x00), as numpy pads it
        + b"\n"
        + b"\x80\x04N."
    )
    with pytest.raises(InputError, match=r"^imu: expected a numeric array .*got dtype object"):
        unchanged.preprocess(tmp_path / "pickled.npy", "imu")


def test_raw_input_problems(unchanged):
    with pytest.raises(InputError, match=r"^image: expected float pixels in \[0, 1\], got range"):
        unchanged.preprocess(np.full((8, 8, 3), 7.0, dtype=np.float32), "image")
    with pytest.raises(InputError, match=r"^audio: expected finite values in a mono waveform"):
        unchanged.preprocess(np.array([0.0, np.nan] * 500), "audio")
    with pytest.raises(
        InputError,
        match=r"^point: expected an \(N, 3\) xyz or \(N, 6\) xyz\+rgb point cloud, got an empty",
    ):
        unchanged.preprocess(np.zeros((0, 6)), "point")
    with pytest.raises(InputError, match=r"^depth: expected a pair \(rgb, depth\)"):
        unchanged.preprocess(np.zeros((8, 8)), "depth")


def test_errors_are_one_family():
    assert issubclass(InputError, OneLLMError) and issubclass(InputError, ValueError)
