"""Image, depth and normal files as users have them, written by PIL / numpy / OpenEXR here
and read back through each modality's preprocess."""

import numpy as np
import OpenEXR
import pytest
import torch
from PIL import Image, ImageFile

from onellm.errors import InputError
from onellm.modalities.clip_image import to_image_tensor
from onellm.modalities.depth import read_depth

rng = np.random.default_rng(0)
RGB = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
BLOCKS = np.zeros((24, 32, 3), np.uint8)  # four flat colours: what palettes and JPEG keep
BLOCKS[:12, :16], BLOCKS[:12, 16:], BLOCKS[12:, :16], BLOCKS[12:, 16:] = (
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (220, 220, 40),
)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": stored landscape, shown portrait
    Image.fromarray(RGB).save(tmp_path / "a.png", exif=exif)
    x = to_image_tensor("image", tmp_path / "a.png")
    assert x.shape == (3, 32, 24)  # upright
    close(x, torch.from_numpy(np.rot90(RGB, k=-1).copy()).permute(2, 0, 1).float() / 255)


def test_palette_cmyk_alpha_and_16_bit_files(tmp_path):
    blocks = torch.from_numpy(BLOCKS).permute(2, 0, 1).float() / 255
    Image.fromarray(BLOCKS).quantize(4).save(tmp_path / "p.png")
    close(to_image_tensor("image", tmp_path / "p.png"), blocks)
    Image.fromarray(BLOCKS).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert (to_image_tensor("image", tmp_path / "c.jpg") - blocks).abs().mean() < 0.03
    rgba = np.concatenate([RGB, np.zeros((24, 32, 1), np.uint8)], -1)
    rgba[:, 16:, 3] = 255  # the left half transparent, the right half opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = to_image_tensor("image", tmp_path / "a.png")
    close(x[:, :, :16], torch.ones(3, 24, 16))  # over white
    close(x[:, :, 16:], torch.from_numpy(RGB[:, 16:]).permute(2, 0, 1).float() / 255)
    grey = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)  # 0 .. 61360
    Image.fromarray(grey).save(tmp_path / "g16.png")
    g = to_image_tensor("image", tmp_path / "g16.png")
    close(g[0], torch.from_numpy(grey.astype(np.float32) / 65535))  # full range, not 255-clipped


def test_hostile_image_files_are_input_errors(tmp_path, monkeypatch, tiny_model):
    mod = tiny_model.modalities["image"]
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"^image: expected an image file, got unreadable .*cut"):
        mod.preprocess(tmp_path / "cut.png")
    for name in ("text.png", "empty.jpg"):
        with pytest.raises(
            InputError, match=rf"^image: expected an image file in one of the formats .*{name}"
        ):
            mod.preprocess(tmp_path / name)
    monkeypatch.setenv("ONELLM_MAX_PIXELS", str(24 * 32 - 1))  # a bomb: more than the limit
    with pytest.raises(
        InputError,
        match=r"^image: expected an image of at most 767 pixels \(ONELLM_MAX_PIXELS\), got 32 x 24",
    ):
        mod.preprocess(tmp_path / "ok.png")


def test_depth_from_a_16_bit_png_keeps_its_metric_range(tmp_path, tiny_model):
    mod = tiny_model.modalities["depth"]
    mm = np.linspace(500, 8000, 24 * 32).reshape(24, 32).astype(np.uint16)  # millimetres
    Image.fromarray(mm).save(tmp_path / "d.png")
    metres = read_depth("depth", tmp_path / "d.png")
    close(torch.from_numpy(metres), torch.from_numpy(mm / 1000.0).float(), atol=1e-6)
    np.save(tmp_path / "d.npy", mm / 1000.0)
    exr = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(exr, {"Z": (mm / 1000.0).astype(np.float32)}).write(str(tmp_path / "d.exr"))
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    want = mod.preprocess((RGB, mm / 1000.0))
    assert want[1].std() > 0.1  # a gradient, not one constant value
    for depth in ("d.png", "d.npy", "d.exr"):
        for raw in (
            (tmp_path / "rgb.png", tmp_path / depth),
            {"rgb": str(tmp_path / "rgb.png"), "depth": str(tmp_path / depth)},
        ):
            close(mod.preprocess(raw), want, atol=1e-5)
    holes = mm.copy()
    holes[:4] = 0  # no reading: the farthest valid depth
    filled = mm.copy()
    filled[:4] = mm[4:].max()
    Image.fromarray(holes).save(tmp_path / "h.png")
    close(mod.preprocess((RGB, tmp_path / "h.png")), mod.preprocess((RGB, filled / 1000.0)))


def test_hostile_depth_and_normal_files_are_input_errors(tmp_path, tiny_model):
    depth, normal = tiny_model.modalities["depth"], tiny_model.modalities["normal"]
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "zero.png")
    (tmp_path / "bad.exr").write_bytes(b"garbage" * 10)
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4)))
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"A": np.ones((4, 4), np.float32)}).write(
        str(tmp_path / "noz.exr")
    )
    cases = {
        "zero.png": r"expected some valid \(> 0, finite\) depth",
        "bad.exr": r"expected an OpenEXR file, got unreadable",
        "cube.npy": r"expected a depth map \(H, W\) .* got shape \(2, 3, 4\)",
        "noz.exr": r"expected a Z, Y, R or depth channel .* got \['A'\]",
    }
    for name, message in cases.items():
        with pytest.raises(InputError, match=rf"^depth: {message}"):
            depth.preprocess((RGB, tmp_path / name))
    (tmp_path / "d.wav").write_bytes(b"RIFF")
    with pytest.raises(InputError, match=r"^depth: expected a file ending in"):
        depth.preprocess((RGB, tmp_path / "d.wav"))
    with pytest.raises(InputError, match=r"^normal: expected"):
        normal.preprocess((RGB, tmp_path / "bad.exr"))


def test_normal_maps_from_a_float_array_file_and_an_8_bit_image(tmp_path, tiny_model):
    mod = tiny_model.modalities["normal"]
    n = rng.uniform(-1, 1, (24, 32, 3)).astype(np.float32)
    np.save(tmp_path / "n.npy", n)
    exr = {"type": OpenEXR.scanlineimage}
    OpenEXR.File(exr, {"RGB": n}).write(str(tmp_path / "n.exr"))  # OpenEXR 3 groups R, G, B
    want = mod.preprocess((RGB, n))
    close(mod.preprocess((RGB, tmp_path / "n.npy")), want)
    close(mod.preprocess((RGB, tmp_path / "n.exr")), want)
    coloured = ((n + 1) / 2 * 255).round().astype(np.uint8)
    Image.fromarray(coloured).save(tmp_path / "n.png")
    assert (mod.preprocess((RGB, tmp_path / "n.png")) - want).abs().max() < 0.05  # 8-bit steps


def test_a_cut_file_is_an_error_even_where_another_library_let_pil_fill_it(
    tmp_path, monkeypatch, tiny_model
):
    # lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES when it is imported
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(InputError, match=r"^image: expected an image file, got unreadable .*cut"):
        tiny_model.modalities["image"].preprocess(tmp_path / "cut.png")
    with pytest.raises(InputError, match=r"^image: expected an image file in one of the formats"):
        tiny_model.modalities["image"].preprocess(tmp_path / "broken.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # the process's setting is left as it was
