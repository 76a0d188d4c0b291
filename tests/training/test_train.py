"""Staged training on the tiny model: short stages, resume, sampling, freezing."""

import json
from collections import Counter

import pytest
import torch

from onellm.data.loader import choose_source
from onellm.data.packing import unpack
from onellm.errors import ConfigError, InputError
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from onellm.training.task import Step
from tests.conftest import ROOT, train_until_killed

STAGE1 = ROOT / "configs" / "stages" / "stage1_image.yaml"


def short(tmp_path, *extra):
    return load_stage(
        STAGE1,
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / 'run'}",
            "steps=12",
            "batch_size=8",
            "log_every=1",
            "eval.samples=4",
            "schedule.warmup_steps=2",
            "data.image.pool=64",
            *extra,
        ],
    )


def trainable_state(trainer):
    return {n: p.detach().clone() for n, p in trainer.root.named_parameters() if p.requires_grad}


def test_a_short_stage_lowers_the_loss_and_keeps_frozen_parts(tmp_path):
    cfg = short(tmp_path, "steps=40", "optimizer.lr=3e-3")
    t = Recipe(cfg, quiet=True).setup()
    frozen = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    first = [t.train_step(s)["loss"] for s in range(3)]
    t.step = 3
    t.train()
    final = t.save()
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.93 * sum(first) / 3  # from a random frozen LLM: 6.1 -> 5.5
    for n, p in t.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    assert (final / "config.yaml").is_file()
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} >= {
        "loss.png",
        "accuracy.png",
        "routing.png",
        "routing_per_query.png",
    }
    events = [r["event"] for r in read_metrics(cfg.output_dir)]
    assert events[0] == "start" and "eval" in events


def test_trainable_count_is_logged_and_patterns_must_match(tmp_path):
    t = Recipe(short(tmp_path), quiet=True).setup()
    start = read_metrics(tmp_path / "run")[0]
    n = sum(p.numel() for p in t.model.projection.parameters())
    assert start["trainable_params"] == n
    with pytest.raises(ConfigError, match=r"pattern 'model.nothing\.\*' matches no parameter"):
        Recipe(short(tmp_path, "trainable=[nothing.*]"), quiet=True).setup()


def test_sampling_proportions_follow_the_weights():
    weights = {"image": 1.0, "audio": 3.0, "imu": 0.0}
    counts = Counter(choose_source(weights, seed=0, step=s) for s in range(4000))
    assert counts["imu"] == 0
    assert abs(counts["audio"] / 4000 - 0.75) < 0.03
    assert choose_source(weights, 0, 17) == choose_source(weights, 0, 17)


def test_resume_after_a_kill_gives_the_same_final_weights(tmp_path, monkeypatch):
    straight = Recipe(short(tmp_path / "a"), quiet=True).setup()
    straight.train()
    straight.save()
    expected = trainable_state(straight)

    cfg = short(tmp_path / "b", "checkpoint_every=5")
    killed = Recipe(cfg, quiet=True).setup()
    train_until_killed(killed, 7, monkeypatch)
    assert (tmp_path / "b" / "run" / "checkpoints" / "step_0000005" / "trainer.json").is_file()
    assert not list((tmp_path / "b" / "run" / "checkpoints").glob(".tmp*"))
    resumed = Recipe(cfg, resume=True, quiet=True).setup()
    assert resumed.step == 5
    resumed.train()
    resumed.save()
    got = trainable_state(resumed)
    for n, v in expected.items():
        torch.testing.assert_close(got[n], v, atol=1e-6, rtol=0)


def test_instruction_stage_trains_lora_only(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage4_instruct.yaml",
        [
            "init_from=configs/tiny.yaml",
            f"output_dir={tmp_path / 'run'}",
            "steps=3",
            "batch_size=4",
            "eval.modalities=[]",
            "data={image: {task: instruct, pool: 16}, imu: {task: instruct, pool: 16}}",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    names = [n for n, p in t.root.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in t.model.projection.named_parameters()}
    t.train()
    final = t.save()
    assert all(
        torch.equal(p, before[n]) for n, p in t.model.projection.named_parameters()
    )  # UPM frozen
    assert (final / "lora" / "adapter_config.json").is_file()


def test_unknown_stage_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.learning_rate'"):
        short(tmp_path, "optimizer.learning_rate=1")
    with pytest.raises(ConfigError, match=r"data.image.task: expected one of"):
        short(tmp_path, "data.image.task=dance")


def test_metrics_lines_are_json(tmp_path):
    t = Recipe(short(tmp_path, "steps=2", "eval.modalities=[]"), quiet=True).setup()
    t.train()
    t.save()
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_a_source_can_set_its_own_batch_size(tmp_path):
    cfg = short(
        tmp_path,
        "data={image: {task: caption, pool: 64}, audio: {task: caption, pool: 64, batch_size: 6}}",
    )
    t = Recipe(cfg, quiet=True).setup()
    steps = {k: next(s for s in range(50) if t.source_for(s) == k) for k in ("image", "audio")}
    sizes = {k: len(t.micro_batches(s, k)[0]["inputs"][k]) for k, s in steps.items()}  # samples
    assert sizes == {"image": 8, "audio": 6}
    with pytest.raises(ConfigError, match=r"data.audio.batch_size: expected >= 1, got 0"):
        short(tmp_path, "data={audio: {task: caption, batch_size: 0}}")


def test_a_fresh_run_into_an_old_dir_starts_new_metrics(tmp_path):
    for _ in range(2):
        Recipe(short(tmp_path, "steps=2", "eval.modalities=[]"), quiet=True).setup().train()
    events = [r["event"] for r in read_metrics(tmp_path / "run")]
    assert events.count("start") == 1 and events.count("train") == 2


def test_init_modalities_start_new_parts_from_a_trained_modality(tmp_path):
    cfg = short(
        tmp_path, "data={video: {task: caption, pool: 16}}", "init_modalities={video: image}"
    )
    t = Recipe(cfg, quiet=True).setup()
    p = t.model.projection
    assert torch.equal(p.queries["video"], p.queries["image"])
    assert torch.equal(p.start_tag["video"], p.start_tag["image"])
    for table in (p.in_proj, p.out_proj, p.routers):
        ours, theirs = table["video"].state_dict(), table["image"].state_dict()
        assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    t.train_step(0)  # a video step moves video's copy, not image's
    assert not torch.equal(p.queries["video"], p.queries["image"])
    with pytest.raises(ConfigError, match=r"init_modalities.video: unknown modality 'sonar'"):
        Recipe(short(tmp_path, "init_modalities={video: sonar}"), quiet=True).setup()


def test_rendered_training_scenes_are_shared_between_stages_and_equal_fresh_ones(tmp_path):
    from onellm.data import shapes, sources

    first = Recipe(short(tmp_path, "data={audio: {task: caption, pool: 8}}"), quiet=True).setup()
    second = Recipe(short(tmp_path, "data={audio: {task: instruct, pool: 8}}"), quiet=True).setup()
    assert first.sources["audio"][0].input is second.sources["audio"][0].input  # one rendering
    mod = second.model.modalities["audio"]
    i = second.sources["audio"].index(0)
    cached = sources.rendered(mod, i, 0, preprocess=True)[1]
    assert cached is second.sources["audio"][0].input
    fresh = mod.preprocess(shapes.render(mod, i, "train", 0).input).unsqueeze(0)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


def test_length_grouped_micro_batches_give_the_whole_batch_gradient(tmp_path, monkeypatch):
    cfg = short(
        tmp_path,
        "data={text: {task: lm, pool: 64, context_mix: 0.5}, image: {task: instruct, pool: 64}}",
        "batch_size=32",
        "init_from=configs/tiny.yaml",
        "trainable=[llm.*, projection.*]",
        "packing=false",  # length groups are what cut padded rows' padding
    )
    t = Recipe(cfg, quiet=True).setup()

    def grads(key):
        batches, task = t.micro_batches(0, key), t.sources[key].task
        items = torch.tensor(float(sum(task.items(b) for b in batches)))
        step = Step(t.model, t.aux, t.sources[key].modality, cfg.grad_accum)
        for b in batches:
            task.loss(step, b, items)[0].backward()
        g = {n: p.grad.clone() for n, p in t.root.named_parameters() if p.grad is not None}
        t.optimizer.zero_grad(set_to_none=True)
        return batches, g

    for key in ("text", "image"):
        grouped, ours = grads(key)
        with monkeypatch.context() as m:  # one batch padded to its longest row
            m.setattr(
                "onellm.training.text_tasks.length_groups",
                lambda lengths, n: [list(range(len(lengths)))],
            )
            (whole,), theirs = grads(key)
        assert len(grouped) == 2
        assert sum(b["input_ids"].numel() for b in grouped) < whole["input_ids"].numel()
        assert ours.keys() == theirs.keys() and ours
        for n in ours:
            torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-6, msg=n)


def test_a_two_modality_source_trains_and_its_placeholder_runs_are_checked(tmp_path):
    cfg = short(
        tmp_path,
        "steps=30",
        "optimizer.lr=3e-3",
        "eval.modalities=[]",
        "data={pair: {modality: [image, audio], task: caption, pool: 32}}",
    )
    t = Recipe(cfg, quiet=True).setup()
    (batch,) = t.micro_batches(0, "pair")
    layout, n = t.model.layout, cfg.batch_size
    assert list(batch["inputs"]) == ["image", "audio"]  # reading order
    assert [x.shape[0] for x in batch["inputs"].values()] == [n, n]
    samples = unpack(batch["input_ids"], batch["unpack"], -1) if "unpack" in batch else None
    for ids in (batch["input_ids"] if samples is None else samples).tolist():  # one run each,
        # the image's before the audio's (packed rows: each sample's own)
        runs = [
            (ids.index(layout.placeholder_ids[m]), ids.count(layout.placeholder_ids[m]))
            for m in ("image", "audio")
        ]
        assert [c for _, c in runs] == [layout.block_len] * 2 and runs[0][0] < runs[1][0]
    runs = torch.isin(batch["input_ids"], torch.tensor(list(layout.placeholder_ids.values())))
    assert (batch["labels"][runs] == -100).all()
    with pytest.raises(InputError, match=r"^audio: expected an input for its placeholder"):
        t.model(batch["input_ids"], inputs={"image": batch["inputs"]["image"]})
    with pytest.raises(InputError, match=rf"^audio: expected {n} input\(s\) .* got {n - 1}"):
        t.model(
            batch["input_ids"], inputs={**batch["inputs"], "audio": batch["inputs"]["audio"][1:]}
        )
    audio = t.model.projection.queries["audio"].detach().clone()
    first = [t.train_step(s)["loss"] for s in range(3)]
    t.step = 3
    t.train()
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.93 * sum(first) / 3, losses
    assert not torch.equal(t.model.projection.queries["audio"], audio)  # the sound was read
