"""The readers' size bounds (onellm/modeling/media_limits.py, modalities/image_reader.py):
normal inputs read exactly as before, large ones reduced before they become float, and
headers that promise too much refused before the data is read."""

from __future__ import annotations

import io
import zipfile

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from onellm.errors import InputError
from onellm.modalities.clip_image import clip_transform
from onellm.modalities.depth import read_depth
from onellm.modalities.image_reader import open_image, pil_to_tensor
from onellm.modalities.video_reader import evenly, upright

SIZE = 64  # the tiny model's image size


def smooth(w: int, h: int) -> np.ndarray:
    """An RGB ramp image (H, W, 3) uint8: smooth, so a reduced copy stays close."""
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)


def test_images_under_four_sizes_read_exactly_as_onellm_transforms_them(tiny_model, tmp_path):
    im = Image.fromarray(smooth(250, 180))  # short side 180 < 4 x 64: untouched
    im.save(tmp_path / "x.png")
    want = clip_transform(pil_to_tensor(im), SIZE)
    assert torch.equal(tiny_model.modalities["image"].preprocess(tmp_path / "x.png"), want)


@pytest.mark.parametrize(
    "suffix, size",
    [(".png", (178, 134)), (".jpg", (200, 150))],  # png: / 9 rounded up; jpeg: libjpeg's 1/8
)
def test_large_images_are_reduced_before_float_and_stay_close(tiny_model, tmp_path, suffix, size):
    full = Image.fromarray(smooth(1600, 1200))
    full.save(tmp_path / f"x{suffix}", quality=95)
    small = open_image("image", tmp_path / f"x{suffix}", fit=SIZE)
    assert small.size == size  # 1200 // (2 x 64) = 9
    got = tiny_model.modalities["image"].preprocess(tmp_path / f"x{suffix}")
    want = clip_transform(pil_to_tensor(Image.open(tmp_path / f"x{suffix}")), SIZE)
    assert (got - want).abs().max() < 0.05  # normalised units; a smooth ramp


def test_a_side_over_four_of_the_other_is_cropped_to_its_middle(tiny_model, tmp_path):
    Image.fromarray(smooth(20_000, 20)).save(tmp_path / "strip.png")
    assert open_image("image", tmp_path / "strip.png", fit=SIZE).size == (80, 20)
    assert tiny_model.modalities["image"].preprocess(tmp_path / "strip.png").shape == (
        3,
        SIZE,
        SIZE,
    )


def test_pixels_for_masks_are_at_most_1024_on_the_long_side(tiny_model, tmp_path):
    image = tiny_model.modalities["image"]
    Image.fromarray(smooth(2100, 1000)).save(tmp_path / "big.png")
    Image.fromarray(smooth(40, 30)).save(tmp_path / "small.png")
    assert image.pixels(tmp_path / "big.png").shape == (3, 334, 700)  # / 3, rounded up
    assert image.pixels(tmp_path / "small.png").shape == (3, 30, 40)


def gif(path, count: int = 7) -> list[Image.Image]:
    frames = [Image.fromarray(np.full((24, 32, 3), 30 * i, np.uint8)) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as im:
        return [f.convert("RGB") for f in ImageSequence.Iterator(im)]


def test_gif_frames_decoded_one_at_a_time_are_the_frames(tiny_model, tmp_path):
    video = tiny_model.modalities["video"]
    every = gif(tmp_path / "a.gif")
    want = torch.stack([video.image(every[i]) for i in evenly(len(every), video.frames)])
    assert torch.equal(video.preprocess(tmp_path / "a.gif"), want)


def raw_h264(path, count: int) -> None:
    """A raw H.264 stream (no container, no duration), frame i at grey level 20 * i."""
    with av.open(str(path), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(count):
            pixels = np.full((48, 64, 3), 20 * i, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        c.mux(s.encode())


def test_a_stream_with_no_duration_keeps_only_the_sampled_frames(tiny_model, tmp_path, monkeypatch):
    video = tiny_model.modalities["video"]
    raw_h264(tmp_path / "s.mp4", 11)
    with av.open(str(tmp_path / "s.mp4")) as c:  # what the reader gave before: all, then pick
        every = [upright(f) for f in c.decode(c.streams.video[0])]
    assert len(every) == 11
    want = torch.stack([video.image(every[i]) for i in evenly(11, video.frames)])
    assert torch.equal(video.preprocess(tmp_path / "s.mp4"), want)
    monkeypatch.setenv("ONELLM_MAX_FRAMES", "10")
    with pytest.raises(InputError, match=r"^video: expected .* at most 10 frames \(ONELLM_MAX_FR"):
        video.preprocess(tmp_path / "s.mp4")


def test_npy_and_npz_read_as_numpy_does_and_lying_headers_are_refused(tiny_model, tmp_path):
    cloud = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", cloud, np.zeros(3))
    np.save(tmp_path / "c.npy", cloud)
    point = tiny_model.modalities["point"]
    for name in ("c.npz", "c.npy"):
        assert torch.equal(point.preprocess(tmp_path / name), point.preprocess(cloud))
    short = tmp_path / "short.npy"
    short.write_bytes((tmp_path / "c.npy").read_bytes()[:-100])
    with pytest.raises(InputError, match=r"^point: expected 7,200 bytes .* got 7,100"):
        point.preprocess(short)
    with zipfile.ZipFile(tmp_path / "bytes.npz", "w") as z:
        z.writestr("arr_0.npy", b"not an array")
    with pytest.raises(InputError, match=r"^point: expected a .npy array, got unreadable"):
        point.preprocess(tmp_path / "bytes.npz")


def test_a_tensor_file_viewing_more_than_it_stores_is_refused(tiny_model, tmp_path):
    torch.save(torch.zeros(6).expand(10_000_000, 6), tmp_path / "wide.pt")  # 24 bytes stored
    with pytest.raises(InputError, match=r"^point: expected at most 16.0 MiB .*10000000, 6"):
        tiny_model.modalities["point"].preprocess(tmp_path / "wide.pt")


def test_point_cloud_headers_are_checked_before_reading(tiny_model, tmp_path):
    ply = tmp_path / "lie.ply"
    ply.write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 1000000000\nproperty float x\n"
        b"property float y\nproperty float z\nend_header\n0 0 0\n"
    )
    pcd = tmp_path / "bomb.pcd"
    head = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 10\n"
    head += "HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 10\nDATA binary_compressed\n"
    pcd.write_bytes(head.encode() + (16).to_bytes(4, "little") + (1 << 31).to_bytes(4, "little"))
    point = tiny_model.modalities["point"]
    with pytest.raises(InputError, match=r"^point: .*ONELLM_MAX_ARRAY_MB.*1,000,000,000 vertex"):
        point.preprocess(ply)
    with pytest.raises(InputError, match=r"^point: .*ONELLM_MAX_ARRAY_MB.* inflated = 2,048.0"):
        point.preprocess(pcd)


def test_depth_maps_are_reduced_in_their_own_bit_depth(tiny_model, tmp_path):
    mm = np.tile(np.linspace(500, 8000, 1200, dtype=np.uint16), (900, 1))  # a 16-bit ramp
    Image.fromarray(mm).save(tmp_path / "d.png")
    im = open_image("depth", tmp_path / "d.png", fit=SIZE)
    assert im.mode == "I" and im.size == (1200 // 7 + 1, 900 // 7 + 1)
    assert abs(np.asarray(im).max() - 8000) < 40  # millimetres kept, not scaled to 8 bits
    out = io.BytesIO()
    Image.fromarray(smooth(40, 30)).save(out, format="PNG")
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(out.getvalue())
    assert tiny_model.modalities["depth"].preprocess((rgb, tmp_path / "d.png")).shape == (
        2,
        3,
        SIZE,
        SIZE,
    )


def test_float_maps_are_subsampled_and_cropped_before_the_float_work(tiny_model, tmp_path):
    np.save(
        tmp_path / "d.npy", np.linspace(1, 9, 2000 * 1500, dtype=np.float32).reshape(1500, 2000)
    )
    d = read_depth("depth", tmp_path / "d.npy", fit=SIZE)
    assert d.shape == (137, 182)  # every 11th pixel: 1500 // (2 x 64)
    assert d[0, 0] == 1 and d[1, 0] == np.linspace(1, 9, 2000 * 1500, dtype=np.float32)[11 * 2000]
    strip = np.random.default_rng(0).uniform(-1, 1, (16, 20_000, 3)).astype(np.float32)
    np.save(tmp_path / "n.npy", strip)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(smooth(40, 30)).save(rgb)
    out = tiny_model.modalities["normal"].preprocess((rgb, tmp_path / "n.npy"))
    assert out.shape == (2, 3, SIZE, SIZE)  # 16 x 64 kept of 20000, not resized to 80000
