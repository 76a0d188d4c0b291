import wave

import numpy as np
import pytest
import torch

from onellm.errors import InputError
from onellm.modalities.audio import AudioModality, resample
from onellm.modalities.fmri import FMRIModality, FMRITokenizer
from onellm.modalities.imu import IMUModality
from onellm.modalities.point import PointModality, PointTokenizer, furthest_point_sample


def write_wav(path, x, rate):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes())


def tone(freq, seconds=1.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_audio_real_scale_shape_padding_and_normalisation():
    m = AudioModality()  # OneLLM: 128 mel bins x 1024 frames
    x = m.preprocess(tone(1000.0, seconds=2.0))
    assert x.shape == (1, 128, 1024)
    frames = 1 + (32000 - 400) // 160  # Kaldi framing: 25 ms windows every 10 ms
    pad = (0 + 4.2677393) / (2 * 4.5689974)  # a zero fbank row, normalised
    assert torch.allclose(x[0, :, frames:], torch.tensor(pad))
    assert not torch.allclose(x[0, :, frames - 1], torch.tensor(pad))


def test_audio_tone_lands_in_the_right_mel_bin():
    m = AudioModality(mel_bins=64, frames=128)
    low, high = m.preprocess(tone(300.0)), m.preprocess(tone(3000.0))
    peak = lambda x: int(x[0, :, 10:50].mean(-1).argmax())  # noqa: E731
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    for x, f in ((low, 300.0), (high, 3000.0)):
        edges = np.linspace(mel(20), mel(8000), 64 + 2)
        expected = int(np.argmin(np.abs(edges[1:-1] - mel(f))))
        assert abs(peak(x) - expected) <= 1


def test_audio_wav_file_and_resampling(tmp_path):
    m = AudioModality(mel_bins=64, frames=128)
    write_wav(tmp_path / "a.wav", tone(440.0), 16000)
    quantised = (np.clip(tone(440.0), -1, 1) * 32767).astype(np.int16) / 32768.0
    torch.testing.assert_close(m.preprocess(tmp_path / "a.wav"), m.preprocess(quantised))
    write_wav(tmp_path / "b.wav", tone(440.0, rate=8000), 8000)
    a, b = m.preprocess(tmp_path / "a.wav"), m.preprocess(tmp_path / "b.wav")
    assert int(a[0, :, 20].argmax()) == int(b[0, :, 20].argmax())
    assert len(resample(np.zeros(8000, np.float32), 8000)) == 16000


def test_corrupt_wav_is_an_input_error(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF-not-really")
    with pytest.raises(InputError, match="^audio: expected a PCM .wav file"):
        AudioModality().preprocess(tmp_path / "bad.wav")


def test_imu_layout_crop_and_pad(tmp_path):
    m = IMUModality(length=400)
    x = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    out = m.preprocess(x)
    assert out.shape == (6, 400)
    torch.testing.assert_close(out, torch.from_numpy(x.T[:, 50:450].copy()))
    short = m.preprocess(x[:100].T)
    assert short.shape == (6, 400) and torch.all(short[:, 100:] == 0)
    np.save(tmp_path / "imu.npy", x)
    torch.testing.assert_close(m.preprocess(tmp_path / "imu.npy"), out)
    with pytest.raises(InputError, match=r"^imu: expected a \(6, N\)"):
        m.preprocess(np.zeros((10, 5)))


def test_fmri_checks_voxel_count():
    m = FMRIModality(voxels=300, tokens=8)
    assert m.preprocess(np.ones(300)).shape == (1, 300)
    with pytest.raises(InputError, match=r"^fmri: expected 300 voxels, got shape \(1, 299\)"):
        m.preprocess(np.ones(299))


def test_fmri_tokens_are_read_channel_major():
    t = FMRITokenizer(width=4, voxels=3, tokens=2)
    y = t.proj(torch.ones(1, 3))
    out = t(torch.ones(1, 1, 3), None)
    assert out[0, 0, 1, 2] == y[0, 2 * 2 + 1]  # token 1, channel 2 <- output c*tokens + t


def test_point_normalisation_and_sampling():
    m = PointModality(points=64, groups=8, neighbours=4, coords="xyz")
    x = np.random.default_rng(0).standard_normal((100, 6)).astype(np.float32) * 3 + 5
    x[:, 3:] = np.random.default_rng(1).integers(0, 256, (100, 3))  # 0-255 colours
    out = m.preprocess(x)
    assert out.shape == (64, 6)
    assert out[:, :3].norm(dim=1).max() <= 1.0 + 1e-6
    assert out[:, 3:].max() <= 1.0


def test_furthest_point_sampling_spreads_out():
    pts = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.9, 0, 0]]])
    assert furthest_point_sample(pts, 3).tolist() == [[0, 2, 3]]


def test_point_tokenizer_groups_neighbours_and_max_pools():
    tok = PointTokenizer(width=8, groups=4, neighbours=3, coords="xyz")
    x = torch.randn(2, 32, 6)
    out = tok(x, None)
    assert out.shape == (2, 1, 4, 8)
    # each token is a max over its centre's neighbours, so it is >= the centre's own feature
    centre_feat = tok.proj(x[:, :1].permute(0, 2, 1).unsqueeze(-1)).squeeze(-1)[..., 0]
    assert torch.all(out[:, 0, 0] >= centre_feat - 1e-6)
