import numpy as np
import torch
from PIL import Image

from onellm.modalities.clip_image import CLIP_MEAN, CLIP_STD
from onellm.modalities.depth import DepthModality
from onellm.modalities.image import ImageModality
from onellm.modalities.normal import NormalModality
from onellm.modalities.video import VideoModality


def image(size=28):
    m = ImageModality(size=size)
    return m


def test_every_raw_form_gives_the_same_tensor(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    m = image()
    ref = m.preprocess(tmp_path / "x.png")
    torch.testing.assert_close(m.preprocess(str(tmp_path / "x.png")), ref)
    torch.testing.assert_close(m.preprocess(Image.fromarray(arr)), ref)
    torch.testing.assert_close(m.preprocess(arr), ref)
    torch.testing.assert_close(m.preprocess(torch.from_numpy(arr).permute(2, 0, 1)), ref)
    torch.testing.assert_close(m.preprocess(arr.astype(np.float32) / 255), ref, atol=1e-5, rtol=0)


def test_clip_normalisation_and_centre_crop():
    m = image(28)
    x = np.zeros((28, 56, 3), dtype=np.uint8)
    x[:, 14:42] = 255  # a white band exactly where the centre crop lands
    out = m.preprocess(x)
    assert out.shape == (3, 28, 28)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[:, 14, 14], white)


def test_video_samples_frames_uniformly(tmp_path):
    m = VideoModality(frames=3, size=28)
    frames = np.stack([np.full((28, 28, 3), 20 * i, dtype=np.uint8) for i in range(7)])
    out = m.preprocess(frames)
    assert out.shape == (3, 3, 28, 28)
    single = image().preprocess
    torch.testing.assert_close(out[1], single(frames[3]))  # the middle frame
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    torch.testing.assert_close(m.preprocess(tmp_path), out)  # a folder of frames
    gif = [Image.fromarray(f) for f in frames]
    gif[0].save(tmp_path / "v.gif", save_all=True, append_images=gif[1:])
    assert m.preprocess(tmp_path / "v.gif").shape == (3, 3, 28, 28)


def test_depth_is_paired_with_rgb_and_min_max_scaled():
    m = DepthModality(size=28)
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    d = np.linspace(2.0, 10.0, 28 * 28).reshape(28, 28)
    out = m.preprocess((rgb, d))
    assert out.shape == (2, 3, 28, 28)
    torch.testing.assert_close(m.preprocess({"rgb": rgb, "depth": d}), out)
    torch.testing.assert_close(out[1], image().preprocess((d - 2) / 8), atol=1e-5, rtol=0)


def test_normal_maps_components_to_colours():
    m = NormalModality(size=28)
    n = np.zeros((28, 28, 3), dtype=np.float32)
    n[..., 2] = 1.0  # facing the camera: (0, 0, 1) -> (0.5, 0.5, 1.0)
    out = m.preprocess((np.zeros((28, 28, 3), np.uint8), n))
    colour = torch.tensor([0.5, 0.5, 1.0])
    want = (colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[1, :, 5, 5], want)
