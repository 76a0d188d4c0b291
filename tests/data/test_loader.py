"""Data at scale: DataLoader workers, streamed manifests and their records."""

import json
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from onellm import OneLLM
from onellm.data import shapes
from onellm.data.manifest import Manifest, Record
from onellm.data.sources import Source
from onellm.errors import InputError
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import train_until_killed
from tests.data.conftest import STAGE1, losses, run, stage


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
    bad.write_text(
        manifest.read_text()
        + json.dumps({"modality": "image", "input": "nope.png", "caption": "x"})
        + "\n"
    )
    m = Manifest(bad)  # existence is checked as records are read, not with 1M stat calls
    with pytest.raises(InputError, match=r"bad.jsonl:25: input .*nope.png.* does not exist"):
        m[24]
    bad.write_text(
        manifest.read_text() + '{"modality": "sound", "input": "a.wav", "caption": "x"}\n'
    )
    with pytest.raises(InputError, match=r"bad.jsonl:25: unknown modality 'sound'"):
        stage_sources(tmp_path, bad)


def stage_sources(tmp_path, data):
    model = OneLLM.from_config("configs/tiny.yaml")
    cfg = stage(tmp_path, "s", data)
    return Source(model, "image", cfg.data["image"], 0)


def test_paired_inputs_in_a_manifest(tmp_path):
    rgb, depth = tmp_path / "a.png", tmp_path / "a_depth.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(depth)
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps(
            {
                "modality": "depth",
                "input": {"rgb": "a.png", "depth": "a_depth.png"},
                "caption": "a near circle",
            }
        )
        + "\n"
    )
    (r,) = list(Manifest(path))
    assert r.input == {"rgb": str(rgb), "depth": str(depth)}
    x = OneLLM.from_config("configs/tiny.yaml").preprocess(r.input, "depth")
    assert x.shape[1] == 2 and not torch.equal(x[0, 0], x[0, 1])  # rgb, then the depth map
    path.write_text(json.dumps({"modality": "depth", "input": {"rgb": 3}, "caption": "x"}) + "\n")
    with pytest.raises(InputError, match=r"d.jsonl:1: expected a string 'input' or a dict of them"):
        Manifest(path)


def test_a_bad_record_read_by_a_worker_is_still_one_line(tmp_path, manifest):
    bad = manifest.parent / "worker-bad.jsonl"  # beside img/
    lines = manifest.read_text().splitlines()
    lines[2] = json.dumps({"modality": "image", "input": "img/none.png", "caption": "x"})
    bad.write_text("\n".join(lines) + "\n")
    r = Recipe(
        stage(tmp_path, "w", bad, "data_workers=2", "data.image.pool=24", "steps=8"), quiet=True
    ).setup()
    with pytest.raises(InputError) as e:
        r.train()
    assert str(e.value).startswith("manifest ") and "worker-bad.jsonl:3: input" in str(e.value)
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


def test_a_manifest_record_with_two_inputs_is_laid_out_where_its_text_names_them(tmp_path):
    lines = []
    scenes = [shapes.sample(m, 4, split="train", seed=1) for m in ("image", "audio")]
    for i, (img, snd) in enumerate(zip(*scenes, strict=True)):
        Image.fromarray(img.input).save(tmp_path / f"{i}.png")
        with wave.open(str(tmp_path / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((snd.input * 32767).astype("<i2").tobytes())
        ask = "Here is <audio>. Does it match <image>?" if i % 2 else "Describe both."
        lines.append(
            {
                "inputs": {"image": f"{i}.png", "audio": f"{i}.wav"},
                "conversations": [
                    {"from": "human", "value": ask},
                    {"from": "gpt", "value": f"{img.caption}, {snd.caption}"},
                ],
            }
        )
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    pair = f"{{modality: [image, audio], task: instruct, caption_mix: 0, data: {path}}}"
    cfg = load_stage(
        STAGE1,
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / 'run'}",
            "steps=2",
            "batch_size=4",
            "log_every=1",
            "eval.modalities=[]",
            f"data={{pair: {pair}}}",
            "packing=false",  # one sample a row: the layout of each is read below
        ],
    )
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
