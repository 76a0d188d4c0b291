"""Hostile media (issue 36) read in-process by the tiny model's own readers: each small
file is refused with an InputError naming the modality and the limit it broke, or read
within 64 MB of peak resident memory, and nothing stays resident after it.

Peak memory is the kernel's high-water mark (VmHWM) reset before each case
(hostile_media.PeakRSS), after glibc has handed freed heap back (malloc_trim).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from onellm.errors import ConfigError, InputError
from tests.serve.hostile_media import CASES, MB, PeakRSS, as_raw, build_all, size_of

BUDGET = 64 * MB  # the bound for a request of at most 1 MB, tiny model
RESIDUE = 4 * MB  # what a second read of the same file may leave (allocator slack)
REFUSED = {  # case -> the limit its error names; every other case is read
    "npz zip bomb (point)": "ONELLM_MAX_ARRAY_MB",
    "PNG 8192^2 (image)": "ONELLM_MAX_PIXELS",
    "npy huge header shape (point)": "ONELLM_MAX_ARRAY_MB",
    "NIfTI huge header shape (fmri)": "ONELLM_MAX_ARRAY_MB",
    "PNG RGB 16 MP (image)": "ONELLM_MAX_DECODE_MB",
    "EPS bytes as .png (image)": "formats onellm reads",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("hostile"))


def read(model, raw, modality):
    """What a chat request reads: the input, and for an image its pixels (for masks)."""
    x = model.preprocess(as_raw(raw), modality)
    if modality == "image":
        model.modalities["image"].pixels(as_raw(raw))
    return x


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_refused_or_read_within_budget(tiny_model, hostile, case):
    path, modality = hostile[case]
    assert size_of(path) < MB
    for attempt in range(2):  # the second shows what stays (the first pays one-time setup)
        with PeakRSS() as m:
            if case in REFUSED:
                with pytest.raises(InputError, match=rf"^{modality}: expected .*{REFUSED[case]}"):
                    read(tiny_model, path, modality)
            else:
                assert read(tiny_model, path, modality).isfinite().all()
        assert m.added < BUDGET, f"{case}: +{m.added / MB:.1f} MB on read {attempt + 1}"
    assert m.after < RESIDUE, f"{case}: {m.after / MB:.1f} MB stayed resident"


def test_postscript_never_reaches_ghostscript(tiny_model, tmp_path, hostile, monkeypatch):
    """EPS bytes under an image name, as an image, a depth pair's rgb and a video frame:
    refused as no format onellm reads, and PIL's EPS reader never even opens them."""

    def never(*args, **kwargs):
        pytest.fail("PostScript reached PIL's EPS reader or a subprocess")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    monkeypatch.setattr(subprocess, "Popen", never)
    eps, _ = hostile["EPS bytes as .png (image)"]
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0.png").write_bytes(eps.read_bytes())
    depth = np.ones((8, 8), np.float32)
    for raw, modality in ((eps, "image"), ((eps, depth), "depth"), (folder, "video")):
        with pytest.raises(InputError, match=rf"^{modality}: expected .*PNG, JPEG.*none of them"):
            tiny_model.preprocess(raw if isinstance(raw, tuple) else str(raw), modality)


def test_the_limits_are_set_from_the_environment(tiny_model, tmp_path, monkeypatch):
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    np.save(tmp_path / "cloud.npy", np.ones((300, 6), np.float32))
    assert tiny_model.preprocess(str(tmp_path / "x.png"), "image").shape == (1, 3, 64, 64)
    monkeypatch.setenv("ONELLM_MAX_PIXELS", "1_199")
    with pytest.raises(
        InputError, match=r"at most 1,199 pixels \(ONELLM_MAX_PIXELS\), got 40 x 30"
    ):
        tiny_model.preprocess(str(tmp_path / "x.png"), "image")
    monkeypatch.setenv("ONELLM_MAX_ARRAY_MB", "0.005")
    with pytest.raises(
        InputError, match=r"^point: expected at most 5,242 bytes .*\(300, 6\) of float32 = 7,200"
    ):
        tiny_model.preprocess(str(tmp_path / "cloud.npy"), "point")
    monkeypatch.setenv("ONELLM_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="ONELLM_MAX_PIXELS: expected a positive number"):
        tiny_model.preprocess(str(tmp_path / "x.png"), "image")
