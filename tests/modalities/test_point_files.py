"""Point clouds from the files people have, each written by its own library in the test
(plyfile a .ply, pypcd4 a .pcd, numpy and torch their arrays), read back to the tensor
the same cloud gives as an (N, 6) array; and the hostile ones refused."""

from __future__ import annotations

import numpy as np
import plyfile
import pytest
import torch
from pypcd4 import Encoding, PointCloud

from onellm.errors import InputError
from onellm.modalities.point import PointModality

rng = np.random.default_rng(0)
XYZ = (rng.standard_normal((300, 3)) * [2.0, 1.0, 0.5] + [10.0, -3.0, 1.0]).astype(np.float32)
RGB = rng.integers(0, 256, (300, 3)).astype(np.uint8)
CLOUD = np.concatenate([XYZ, RGB.astype(np.float32)], axis=1)  # (N, 6), colours 0-255


@pytest.fixture
def point():
    return PointModality(points=128, groups=8, neighbours=4, coords="xyz")


@pytest.fixture
def reference(point):
    return point.preprocess(CLOUD)


def write_ply(path, xyz, rgb=None, *, text=False, colour_type="u1"):
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    fields += [] if rgb is None else [(c, colour_type) for c in ("red", "green", "blue")]
    rows = np.empty(len(xyz), dtype=fields)
    for i, c in enumerate("xyz"):
        rows[c] = xyz[:, i]
    for i, c in enumerate(("red", "green", "blue") if rgb is not None else ()):
        rows[c] = rgb[:, i]
    plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")], text=text).write(str(path))
    return path


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_ply_with_colours_reads_as_the_array(tmp_path, point, reference, text):
    path = write_ply(tmp_path / "a.ply", XYZ, RGB, text=text)
    torch.testing.assert_close(point.preprocess(path), reference, atol=1e-6, rtol=0)


def test_ply_with_float_colours_in_0_1_reads_as_the_array(tmp_path, point, reference):
    path = write_ply(tmp_path / "f.ply", XYZ, RGB / 255.0, colour_type="f4")
    torch.testing.assert_close(point.preprocess(path), reference, atol=1e-6, rtol=0)


def test_ascii_pcd_as_pcl_writes_it_reads_as_the_array(tmp_path, point, reference):
    packed = (RGB[:, 0].astype(np.uint32) << 16) | (RGB[:, 1].astype(np.uint32) << 8) | RGB[:, 2]
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb\n"
        "SIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH 300\nHEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 300\nDATA ascii\n"
    )
    rows = "".join(
        f"{x:.9g} {y:.9g} {z:.9g} {c}\n" for (x, y, z), c in zip(XYZ, packed, strict=True)
    )
    (tmp_path / "pcl.pcd").write_text(header + rows)
    torch.testing.assert_close(point.preprocess(tmp_path / "pcl.pcd"), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("data", ["binary", "binary_compressed"])  # pypcd4's ascii loses rgb
def test_pcd_with_packed_rgb_reads_as_the_array(tmp_path, point, reference, data):
    packed = PointCloud.encode_rgb(RGB)
    cloud = PointCloud.from_xyzrgb_points(np.c_[XYZ.astype(np.float64), packed])
    path = tmp_path / f"{data}.pcd"
    cloud.save(path, encoding=Encoding(data))
    torch.testing.assert_close(point.preprocess(path), reference, atol=1e-5, rtol=0)


def test_array_files_and_oneLLMs_transposed_pt_read_as_the_array(tmp_path, point, reference):
    np.save(tmp_path / "a.npy", CLOUD)
    np.savez(tmp_path / "a.npz", cloud=CLOUD)
    np.savetxt(tmp_path / "a.xyz", CLOUD)
    np.savetxt(tmp_path / "a.csv", CLOUD, delimiter=",")
    torch.save(torch.from_numpy(CLOUD.T.copy()), tmp_path / "a.pt")  # OneLLM: (6, N)
    for name in ("a.npy", "a.npz", "a.xyz", "a.csv", "a.pt"):
        torch.testing.assert_close(point.preprocess(tmp_path / name), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(point.preprocess(CLOUD.T), reference)  # (6, N) as an array


def test_xyz_only_clouds_get_their_colour_filled(tmp_path, point):
    grey = point.preprocess(write_ply(tmp_path / "xyz.ply", XYZ))
    assert torch.all(grey[:, 3:] == 0.5)  # coords=xyz: mid grey
    torch.testing.assert_close(grey[:, :3], point.preprocess(CLOUD)[:, :3])
    by_colour = PointModality(points=128, groups=8, neighbours=4, coords="rgb")  # OneLLM's
    filled = by_colour.preprocess(XYZ)
    # grouping on the colour channels still sees the geometry: colour = (xyz + 1) / 2
    torch.testing.assert_close(filled[:, 3:], (filled[:, :3] + 1) / 2)
    assert filled[:, 3:].std(0).min() > 0.02


def test_normalisation_is_oneLLMs_pc_norm(point):
    out = point.preprocess(CLOUD)
    xyz = CLOUD[:, :3] - CLOUD[:, :3].mean(0)
    xyz /= np.sqrt((xyz**2).sum(1)).max()
    idx = np.linspace(0, len(CLOUD) - 1, 128).round().astype(int)
    torch.testing.assert_close(out[:, :3], torch.from_numpy(xyz[idx]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 3:], torch.from_numpy(RGB[idx] / 255.0).float())


def _ply_cut(d):
    data = write_ply(d / "full.ply", XYZ, RGB).read_bytes()
    (d / "cut.ply").write_bytes(data[: len(data) // 2])
    return d / "cut.ply"


def _ply_faces_only(d):
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(faces, "face")]).write(str(d / "f.ply"))
    return d / "f.ply"


def _ply_no_z(d):
    rows = np.zeros(10, dtype=[("x", "f4"), ("y", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")]).write(str(d / "xy.ply"))
    return d / "xy.ply"


def _pcd_cut(d):
    PointCloud.from_xyz_points(XYZ.astype(np.float64)).save(d / "full.pcd")
    data = (d / "full.pcd").read_bytes()
    (d / "cut.pcd").write_bytes(data[: len(data) - 400])
    return d / "cut.pcd"


def _write(d, name, data: bytes):
    (d / name).write_bytes(data)
    return d / name


class Payload:  # any class: torch.load(weights_only=True) must refuse to build it
    pass


def _pickle_pt(d):
    torch.save({"points": torch.zeros(10, 6), "payload": Payload()}, d / "p.pt")
    return d / "p.pt"


HOSTILE = {  # name -> (make the file, what the message says)
    "missing": (lambda d: d / "none.ply", "readable file, got .*none.ply.*no such file"),
    "unknown suffix": (lambda d: _write(d, "a.obj", b"v 0 0 0"), r"ending in \.npy, .*\.ply"),
    "ply cut in half": (_ply_cut, r"a \.ply point cloud, got unreadable .*cut\.ply"),
    "random bytes as .ply": (
        lambda d: _write(d, "r.ply", rng.bytes(2000)),
        r"a \.ply point cloud, got unreadable",
    ),
    "ply with faces only": (_ply_faces_only, r"a 'vertex' element in .*f\.ply.*\['face'\]"),
    "ply without z": (_ply_no_z, r"x, y and z fields in .*xy\.ply.*\['x', 'y'\]"),
    "pcd cut short": (_pcd_cut, r"a \.pcd point cloud, got unreadable .*cut\.pcd"),
    "text as .pcd": (lambda d: _write(d, "t.pcd", b"hello\n" * 20), r"a \.pcd point cloud"),
    "pickled objects in a .pt": (_pickle_pt, "a numeric array file, got unreadable .*p.pt"),
    "empty .npy": (
        lambda d: np.save(d / "e.npy", np.zeros((0, 6))) or d / "e.npy",
        r"point cloud, got an empty array",
    ),
    "(4, 4) array": (
        lambda d: np.save(d / "s.npy", np.zeros((4, 4))) or d / "s.npy",
        r"got shape \(4, 4\)",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_point_file_is_an_input_error_and_changes_nothing(unchanged, tmp_path, case):
    make, says = HOSTILE[case]
    with pytest.raises(InputError, match="^point: expected") as e:
        unchanged.preprocess(make(tmp_path), "point")
    assert e.match(says)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (np.zeros((6, 6)), r"more than 6 points, got shape \(6, 6\), which reads as points either"),
        (np.zeros((3, 6)), r"got shape \(3, 6\)"),
        (np.zeros((10, 4)), r"got shape \(10, 4\)"),
        (np.full((10, 3), np.nan), "finite values"),
    ],
)
def test_hostile_point_array_is_an_input_error(point, raw, says):
    with pytest.raises(InputError, match="^point: expected") as e:
        point.preprocess(raw)
    assert e.match(says)
