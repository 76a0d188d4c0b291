"""WebDataset tar shards as a training source: written from a manifest, read by position,
their members decoded for each modality's loader, bad ones named."""

import io
import os
import tarfile
import wave

import numpy as np
import pytest
from PIL import Image

from onellm import OneLLM
from onellm.data.manifest import Manifest
from onellm.data.shards import Member, Shards, materialised, write_shards
from onellm.errors import InputError
from tests.data.conftest import losses, run, stage


def png():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def npz():
    buf = io.BytesIO()
    np.savez(buf, x=np.array([1, 2]))
    return buf.getvalue()


def test_shards_written_from_a_manifest_train_as_the_manifest(tmp_path, manifest):
    patterns = write_shards(manifest, tmp_path / "shards", per_shard=10, quiet=True)
    assert patterns == {"image": str(tmp_path / "shards" / "image" / "shard-{000000..000002}.tar")}
    s = Shards(patterns["image"], "image")
    m = Manifest(manifest)
    assert len(s) == 24 and s[13].caption == m[13].caption
    from_manifest = run(stage(tmp_path, "m", manifest))
    from_shards = run(stage(tmp_path, "s", patterns["image"], "data_workers=2"))
    assert losses(tmp_path / "s") == pytest.approx(losses(tmp_path / "m"), abs=1e-6)
    assert from_manifest.step == from_shards.step == 6


def test_a_bad_shard_member_names_its_shard_and_sample(tmp_path):
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("000.png", png()),
            ("000.json", b'{"caption": "a red circle"}'),
            ("001.png", b"not a png"),
            ("001.json", b'{"caption": "x"}'),
            ("002.png", png()),
            ("002.json", b"{broken"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s = Shards(str(path), "image")
    assert len(s) == 3 and s[0].caption == "a red circle"
    with pytest.raises(
        InputError, match=r"shard .*shard-000000.tar, sample '002': expected its .json"
    ):
        s[2]
    with pytest.raises(InputError, match=r"sample '001', member .png: expected a .png file"):
        with materialised(s[1].input):
            pass
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:1200])
    with pytest.raises(InputError, match=r"shard .*cut.tar"):
        Shards(str(cut), "image")[0]
    with pytest.raises(InputError, match=r"expected tar files matching .*, got no"):
        Shards(str(tmp_path / "x-{0..1}.tar"), "image")


def test_shard_members_reach_each_modalitys_loader(tmp_path):
    """Arrays decode in memory, other members (a .wav here) go through a temporary file."""
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0).reshape(2, 3))
    with materialised(
        {"a": Member("npy", buf.getvalue(), "x"), "b": Member("npz", npz(), "y")}
    ) as raw:
        assert raw["a"].shape == (2, 3) and raw["b"].tolist() == [1, 2]
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(np.arange(8000) / 5) * 3000).astype(np.int16).tobytes())
    audio = OneLLM.from_config("configs/tiny.yaml").modalities["audio"]
    with materialised(Member("wav", wav.getvalue(), "z")) as path:
        assert path.endswith(".wav") and audio.preprocess(path).shape[0] == 1
    assert not os.path.exists(path)  # the temporary file is gone


def test_shards_refuse_duplicate_members_and_stale_folders(tmp_path, manifest):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.png", png()), ("a.png", png()), ("a.json", b'{"caption": "x"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match=r"dup.tar, sample 'a': expected one member per extension"):
        Shards(str(path), "image")
    write_shards(manifest, tmp_path / "out", quiet=True)
    with pytest.raises(InputError, match=r"expected an empty folder for image"):
        write_shards(manifest, tmp_path / "out", quiet=True)
