"""fMRI as people have it: OneLLM's NSD arrays with repeats (averaged), and NIfTI volumes
written by nibabel in the test, their voxels picked by a mask."""

from __future__ import annotations

import gzip

import nibabel
import numpy as np
import pytest
import torch

from onellm.errors import InputError
from onellm.modalities.fmri import FMRIModality

VOXELS = 48
rng = np.random.default_rng(0)
MASK = np.zeros((5, 4, 6), dtype=bool)
MASK.flat[rng.choice(MASK.size, VOXELS, replace=False)] = True
REPEATS = rng.standard_normal((3, *MASK.shape)).astype(np.float32)  # 3 scans of one image
VECTORS = np.stack([r[MASK] for r in REPEATS])  # (3, voxels), C order as in OneLLM's files


@pytest.fixture
def fmri():
    return FMRIModality(voxels=VOXELS, tokens=4)


@pytest.fixture
def reference(fmri):
    return fmri.preprocess(VECTORS.mean(axis=0))


def save(path, data, **header):
    img = nibabel.Nifti1Image(data, affine=np.diag([1.8, 1.8, 1.8, 1.0]))
    for key, value in header.items():
        img.header[key] = value
    nibabel.save(img, path)
    return path


def test_oneLLMs_nsd_arrays_are_averaged_over_repeats(tmp_path, fmri, reference):
    np.save(tmp_path / "nsd.npy", VECTORS)  # (3, 15724) in OneLLM's NSD files
    torch.testing.assert_close(fmri.preprocess(tmp_path / "nsd.npy"), reference)
    torch.testing.assert_close(fmri.preprocess(VECTORS), reference)
    torch.testing.assert_close(fmri.preprocess(VECTORS[:1]), fmri.preprocess(VECTORS[0]))


def test_a_4d_nifti_with_a_mask_file_reads_as_the_arrays(tmp_path, fmri, reference):
    scan = save(tmp_path / "scan.nii.gz", np.moveaxis(REPEATS, 0, -1))  # (X, Y, Z, repeats)
    mask = save(tmp_path / "mask.nii.gz", MASK.astype(np.uint8))
    torch.testing.assert_close(fmri.preprocess({"scan": scan, "mask": mask}), reference)
    configured = FMRIModality(voxels=VOXELS, tokens=4, mask=str(mask))  # `mask:` in the YAML
    torch.testing.assert_close(configured.preprocess(scan), reference)
    np.save(tmp_path / "mask.npy", MASK)
    torch.testing.assert_close(
        fmri.preprocess({"scan": scan, "mask": tmp_path / "mask.npy"}), reference
    )


def test_a_3d_nifti_with_integer_data_has_its_scaling_applied(tmp_path, fmri):
    raw = rng.integers(-1000, 1000, MASK.shape).astype(np.int16)
    scan = save(tmp_path / "one.nii", raw, scl_slope=0.01, scl_inter=2.0)
    mask = save(tmp_path / "mask.nii", MASK.astype(np.uint8))
    want = torch.from_numpy((raw * 0.01 + 2.0)[MASK].astype(np.float32)).unsqueeze(0)
    torch.testing.assert_close(fmri.preprocess({"scan": scan, "mask": mask}), want)


def _huge_header(d):
    """A valid header that claims 2048^3 float32 voxels, over a file of a few bytes."""
    hdr = nibabel.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    (d / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 8)
    return {"scan": d / "huge.nii", "mask": save(d / "m.nii", MASK.astype(np.uint8))}


def _cut(d):
    data = gzip.compress(save(d / "full.nii", np.moveaxis(REPEATS, 0, -1)).read_bytes())
    (d / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return {"scan": d / "cut.nii.gz", "mask": save(d / "m.nii", MASK.astype(np.uint8))}


def _with_mask(scan, mask):
    def make(d):
        return {"scan": save(d / "s.nii.gz", scan), "mask": save(d / "m.nii.gz", mask)}

    return make


HOSTILE = {  # name -> (make the input, what the message says)
    "no mask": (
        lambda d: save(d / "s.nii.gz", REPEATS[0]),
        r"a voxel mask for a \(5, 4, 6\) volume .* got none",
    ),
    "mask of another shape": (
        _with_mask(REPEATS[0], np.ones((5, 4, 5), np.uint8)),
        r"a mask of shape \(5, 4, 6\), got \(5, 4, 5\)",
    ),
    "mask picking too many voxels": (
        _with_mask(REPEATS[0], np.ones((5, 4, 6), np.uint8)),
        r"48 voxels, got shape \(1, 120\)",
    ),
    "a 2-D image": (
        _with_mask(np.zeros((5, 4), np.float32), MASK.astype(np.uint8)),
        r"3-D or 4-D .* \(5, 4\)",
    ),
    "gzip cut in half": (_cut, r"NIfTI .* got unreadable .*cut\.nii\.gz"),
    "random bytes as .nii": (
        lambda d: (d / "r.nii").write_bytes(rng.bytes(1000)) and d / "r.nii",
        r"NIfTI .* got unreadable .*r\.nii",
    ),
    "header claiming 2048^3 voxels": (
        _huge_header,
        r"at most 16.0 MiB \(ONELLM_MAX_ARRAY_MB\) .* shape \(2048, 2048, 2048\)",
    ),
    "dict with other keys": (lambda d: {"volume": "a.nii"}, r"keys 'scan' and 'mask', got"),
    "wrong voxel count": (lambda d: np.zeros((2, 47)), r"48 voxels, got shape \(2, 47\)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_fmri_input_is_an_input_error_and_changes_nothing(unchanged, tmp_path, case):
    make, says = HOSTILE[case]
    with pytest.raises(InputError, match="^fmri: expected") as e:
        unchanged.preprocess(make(tmp_path), "fmri")
    assert e.match(says)


def test_the_size_limit_is_checked_from_the_header_before_reading(tmp_path, fmri, monkeypatch):
    scan = save(tmp_path / "s.nii.gz", np.moveaxis(REPEATS, 0, -1))
    mask = save(tmp_path / "m.nii.gz", MASK.astype(np.uint8))
    monkeypatch.setenv("ONELLM_MAX_ARRAY_MB", str((REPEATS.size * 4 - 1) / 2**20))
    monkeypatch.setattr(nibabel.Nifti1Image, "get_fdata", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(
        InputError,
        match=r"^fmri: expected at most 1,439 bytes \(ONELLM_MAX_ARRAY_MB\) .*NIfTI volume",
    ):
        fmri.preprocess({"scan": scan, "mask": mask})
