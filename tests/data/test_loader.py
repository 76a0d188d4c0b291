"""Data at scale: DataLoader workers, streamed manifests, tar shards, the feature cache."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from onellm.data import shapes
from onellm.data.feature_cache import FeatureCache
from onellm.data.manifest import Manifest, Record
from onellm.data.shards import Shards, write_shards
from onellm.errors import InputError
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, train_until_killed

STAGE1 = ROOT / "configs" / "stages" / "stage1_image.yaml"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """24 shapes-world images as PNG files and a JSONL manifest of their captions."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "img").mkdir()
    lines = []
    for i, scene in enumerate(shapes.sample("image", 24, split="train", seed=5)):
        Image.fromarray(scene.input).save(folder / "img" / f"{i}.png")
        lines.append({"modality": "image", "input": f"img/{i}.png", "caption": scene.caption})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def stage(tmp_path, name, data, *extra):
    return load_stage(STAGE1, [
        "init_from=configs/tiny.yaml", f"output_dir={tmp_path / name}", "steps=6", "batch_size=4",
        "log_every=1", "eval.modalities=[]", f"data.image.data={data}", *extra,
    ])  # fmt: skip


def run(cfg, resume=False):
    r = Recipe(cfg, resume=resume, quiet=True).setup()
    r.train()
    r.save()
    return r


def losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if m["event"] == "train"]


def trained(r):
    return {n: p.detach().clone() for n, p in r.root.named_parameters() if p.requires_grad}


def test_resumed_with_two_workers_equals_uninterrupted_in_process(tmp_path, manifest, monkeypatch):
    whole = run(stage(tmp_path, "whole", manifest, "data_workers=0"))
    cfg = stage(tmp_path, "parts", manifest, "data_workers=2", "checkpoint_every=3")
    first = Recipe(cfg, quiet=True).setup()
    train_until_killed(first, 4, monkeypatch)
    resumed = run(cfg, resume=True)
    assert resumed.step == 6
    want, got = trained(whole), trained(resumed)
    assert want.keys() == got.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=0)
    # the log says whether the step waited on data, and the memory it took
    last = [m for m in read_metrics(tmp_path / "parts") if m["event"] == "train"][-1]
    assert 0 <= last["data_wait"] <= 1 and last["peak_rss_mb"] > 0


def test_a_manifest_is_an_index_of_offsets_read_when_asked(tmp_path, manifest):
    m = Manifest(manifest)
    assert len(m) == 24 and m.offsets.dtype == np.int64 and m.lines.dtype == np.int32
    assert not any(isinstance(v, (list, dict, Record)) for v in vars(m).values())
    # record 5 is read from the file when it is asked for, not from a copy made at indexing
    copy = manifest.parent / "copy.jsonl"  # beside img/
    copy.write_text(manifest.read_text())
    m = Manifest(copy)
    lines = manifest.read_text().splitlines(keepends=True)
    record = json.loads(lines[5])
    new = record["caption"].upper()  # the same length: line 6's offset stays
    lines[5] = json.dumps({**record, "caption": new}) + "\n"
    copy.write_text("".join(lines))
    assert m[5].caption == new and m[6].caption == json.loads(lines[6])["caption"]
    assert m[5].input.endswith("img/5.png")


def test_a_bad_record_is_named_when_it_is_read(tmp_path, manifest):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text() + json.dumps({"modality": "image", "input": "nope.png",
                                                      "caption": "x"}) + "\n")  # fmt: skip
    m = Manifest(bad)  # existence is checked as records are read, not with 1M stat calls
    with pytest.raises(InputError, match=r"bad.jsonl:25: input .*nope.png.* does not exist"):
        m[24]
    bad.write_text(
        manifest.read_text() + '{"modality": "sound", "input": "a.wav", "caption": "x"}\n'
    )
    with pytest.raises(InputError, match=r"bad.jsonl:25: unknown modality 'sound'"):
        stage_sources(tmp_path, bad)


def stage_sources(tmp_path, data):
    from onellm import OneLLM
    from onellm.data.sources import Source

    model = OneLLM.from_config("configs/tiny.yaml")
    cfg = stage(tmp_path, "s", data)
    return Source(model, "image", cfg.data["image"], 0)


def test_paired_inputs_in_a_manifest(tmp_path):
    rgb, depth = tmp_path / "a.png", tmp_path / "a_depth.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(depth)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"modality": "depth", "input": {"rgb": "a.png", "depth": "a_depth.png"},
                                "caption": "a near circle"}) + "\n")  # fmt: skip
    (r,) = list(Manifest(path))
    assert r.input == {"rgb": str(rgb), "depth": str(depth)}
    from onellm import OneLLM

    x = OneLLM.from_config("configs/tiny.yaml").preprocess(r.input, "depth")
    assert x.shape[1] == 2 and not torch.equal(x[0, 0], x[0, 1])  # rgb, then the depth map
    path.write_text(json.dumps({"modality": "depth", "input": {"rgb": 3}, "caption": "x"}) + "\n")
    with pytest.raises(InputError, match=r"d.jsonl:1: expected a string 'input' or a dict of them"):
        Manifest(path)


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
        for name, data in [("000.png", png()), ("000.json", b'{"caption": "a red circle"}'),
                           ("001.png", b"not a png"), ("001.json", b'{"caption": "x"}'),
                           ("002.png", png()), ("002.json", b"{broken")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s = Shards(str(path), "image")
    assert len(s) == 3 and s[0].caption == "a red circle"
    with pytest.raises(
        InputError, match=r"shard .*shard-000000.tar, sample '002': expected its .json"
    ):
        s[2]
    from onellm.data.shards import materialised

    with pytest.raises(InputError, match=r"sample '001', member .png: expected a .png file"):
        with materialised(s[1].input):
            pass
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:1200])
    with pytest.raises(InputError, match=r"shard .*cut.tar"):
        Shards(str(cut), "image")[0]
    with pytest.raises(InputError, match=r"expected tar files matching .*, got no"):
        Shards(str(tmp_path / "x-{0..1}.tar"), "image")


def png():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_feature_cached_and_uncached_stages_give_the_same_losses(tmp_path, manifest):
    plain = run(stage(tmp_path, "plain", "synthetic", "data.image.pool=16"))
    cache = tmp_path / "features"
    cached = run(
        stage(tmp_path, "cached", "synthetic", "data.image.pool=16", f"feature_cache={cache}")
    )
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)
    (folder,) = cache.iterdir()
    assert folder.name.startswith("image-") and len(FeatureCache(folder)) == 16
    assert cached.sources["image"].features is not None and plain.sources["image"].features is None
    start = [m for m in read_metrics(tmp_path / "cached") if m["event"] == "feature_cache"]
    assert start and "cached in" in start[0]["sources"]["image"]
    # a second stage with the same frozen encoder and data reuses the folder
    stamp = (folder / "features-00000.safetensors").stat().st_mtime_ns
    run(stage(tmp_path, "again", "synthetic", "data.image.pool=16", f"feature_cache={cache}"))
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert (folder / "features-00000.safetensors").stat().st_mtime_ns == stamp


def test_the_cache_stands_aside_where_inputs_or_the_encoder_change(tmp_path):
    cache = tmp_path / "features"
    r = Recipe(stage(tmp_path, "t", "synthetic", "data.image.pool=8", f"feature_cache={cache}",
                     "trainable=[projection.*, encoder.*]"), quiet=True).setup()  # fmt: skip
    assert r.sources["image"].features is None
    assert (
        r.cache_notes["image"]
        == "reads its inputs: encoder trains in this stage, so its features change"
    )
    r = Recipe(stage(tmp_path, "z", "synthetic", "data.image.pool=8", f"feature_cache={cache}",
                     "data.image.task=clip", "data.image.zoom=[0.5, 1.0]", "trainable=[encoder.*]"),
               quiet=True).setup()  # fmt: skip
    assert (
        r.cache_notes["image"]
        == "reads its inputs: zoom changes the input on every pass (an augmentation)"
    )
    assert not cache.exists()


def test_shard_members_reach_each_modalitys_loader(tmp_path):
    """Arrays decode in memory, other members (a .wav here) go through a temporary file."""
    import wave

    from onellm.data.shards import Member, materialised

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
    from onellm import OneLLM

    audio = OneLLM.from_config("configs/tiny.yaml").modalities["audio"]
    with materialised(Member("wav", wav.getvalue(), "z")) as path:
        assert path.endswith(".wav") and audio.preprocess(path).shape[0] == 1
    assert not __import__("os").path.exists(path)  # the temporary file is gone


def npz():
    buf = io.BytesIO()
    np.savez(buf, x=np.array([1, 2]))
    return buf.getvalue()


def test_a_bad_record_read_by_a_worker_is_still_one_line(tmp_path, manifest):
    bad = manifest.parent / "worker-bad.jsonl"  # beside img/
    lines = manifest.read_text().splitlines()
    lines[2] = json.dumps({"modality": "image", "input": "img/none.png", "caption": "x"})
    bad.write_text("\n".join(lines) + "\n")
    r = Recipe(stage(tmp_path, "w", bad, "data_workers=2", "data.image.pool=24", "steps=8"),
               quiet=True).setup()  # fmt: skip
    with pytest.raises(InputError) as e:
        r.train()
    assert str(e.value).startswith("manifest ") and "worker-bad.jsonl:3: input" in str(e.value)
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


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


def test_the_cache_is_built_under_the_stages_autocast(tmp_path):
    """bf16: CLIP runs under autocast when uncached, so the cache is built under it too."""
    run(stage(tmp_path, "plain", "synthetic", "data.image.pool=16", "precision=bf16"))
    run(stage(tmp_path, "cached", "synthetic", "data.image.pool=16", "precision=bf16",
              f"feature_cache={tmp_path / 'f'}"))  # fmt: skip
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), abs=1e-5)
    fp32 = run(stage(tmp_path, "fp32", "synthetic", "data.image.pool=16",
                     f"feature_cache={tmp_path / 'f'}"))  # fmt: skip
    assert len(list((tmp_path / "f").iterdir())) == 2  # precision is in the fingerprint
    assert fp32.sources["image"].features is not None


def test_a_manifest_record_with_two_inputs_is_laid_out_where_its_text_names_them(tmp_path):
    import wave

    lines = []
    scenes = [shapes.sample(m, 4, split="train", seed=1) for m in ("image", "audio")]
    for i, (img, snd) in enumerate(zip(*scenes, strict=True)):
        Image.fromarray(img.input).save(tmp_path / f"{i}.png")
        with wave.open(str(tmp_path / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((snd.input * 32767).astype("<i2").tobytes())
        ask = "Here is <audio>. Does it match <image>?" if i % 2 else "Describe both."
        lines.append({"inputs": {"image": f"{i}.png", "audio": f"{i}.wav"}, "conversations": [
            {"from": "human", "value": ask}, {"from": "gpt", "value": f"{img.caption}, {snd.caption}"}]})  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    pair = f"{{modality: [image, audio], task: instruct, caption_mix: 0, data: {path}}}"
    cfg = load_stage(STAGE1, ["init_from=configs/tiny.yaml", f"output_dir={tmp_path / 'run'}", "steps=2",
                              "batch_size=4", "log_every=1", "eval.modalities=[]", f"data={{pair: {pair}}}"])  # fmt: skip
    r = Recipe(cfg, quiet=True).setup()
    (batch,) = r.micro_batches(0, "pair")
    layout = r.model.layout
    image, audio = (layout.placeholder_ids[m] for m in ("image", "audio"))
    order = [r.data.sources["pair"].index(p) for p in range(4)]
    for k, ids in zip(order, batch["input_ids"].tolist(), strict=True):
        at = {m: ids.index(i) for m, i in (("image", image), ("audio", audio))}
        assert ids.count(image) == ids.count(audio) == layout.block_len
        assert (at["audio"] < at["image"]) == bool(k % 2), (k, at)  # where the text puts them
        assert at["image" if k % 2 else "audio"] > 1  # inside the text, not after BOS
    wav = r.model.preprocess(str(tmp_path / f"{order[0]}.wav"), "audio")
    torch.testing.assert_close(batch["inputs"]["audio"][0], wav[0])
    r.train()
    assert len(losses(tmp_path / "run")) == 2
