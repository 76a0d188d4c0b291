"""Stage 0's contrastive CLIP training (onellm/training/contrastive.py), on images and video clips."""

import pytest
import torch

from onellm.data.sources import Source
from onellm.errors import ConfigError
from onellm.model import OneLLM
from onellm.training.contrastive import ContrastiveHead, zoom_out
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import SourceConfig, load_stage
from tests.conftest import ROOT


def test_a_clip_of_identical_frames_scores_as_its_image():
    torch.manual_seed(0)
    model = OneLLM.from_config(ROOT / "configs" / "tiny.yaml")
    head = ContrastiveHead(width=model.encoder.width, vocab_size=512)
    ids = torch.randint(3, 500, (3, 6))
    image = torch.randn(3, 3, 64, 64)
    video = image[:, None].expand(3, 2, 3, 64, 64)
    captions = ["a", "b", "a"]
    still = head.loss(model, image, ids, torch.ones_like(ids), captions)
    moving = head.loss(model, video, ids, torch.ones_like(ids), captions)
    torch.testing.assert_close(moving, still)
    other = head.loss(
        model, torch.stack([video[:, 0], -video[:, 1]], 1), ids, torch.ones_like(ids), captions
    )
    assert not torch.allclose(other, still)  # both frames count


def test_contrastive_stage_on_images_and_video_lowers_its_loss(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage0_pretrain.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "steps=40",
            "batch_size=16",
            "log_every=1",
            "data={image: {task: clip, pool: 64}, video: {task: clip, pool: 64, batch_size: 8}}",
            "trainable=[encoder.*]",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    llm = {n: p.detach().clone() for n, p in t.model.llm.named_parameters()}
    t.train()
    t.save()
    rows = [r for r in read_metrics(tmp_path / "run") if r["event"] == "train"]
    for source in ("image", "video"):
        losses = [r["loss"] for r in rows if r["source"] == source]
        assert len(losses) >= 6, source
        assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), (source, losses)
    assert all(torch.equal(p, llm[n]) for n, p in t.model.llm.named_parameters())


def test_zoom_out_shrinks_a_shape_about_the_centre_and_keeps_its_side():
    image = torch.zeros(3, 64, 64)
    image[:, 24:40, 4:20] = 1.0  # a 16 x 16 square on the left, touching nothing
    image[0, 0, :3] = 5.0  # a few odd edge pixels do not tint the margin
    full, small, other = zoom_out(torch.stack([image, image, image.flip(-1)]), [1.0, 0.5, 0.5])
    assert torch.equal(full, image)
    fg = small[1] > 0.5
    assert 50 <= int(fg.sum()) <= 80  # (16 * 0.5)^2 = 64 pixels
    assert fg.nonzero()[:, 1].float().mean() < 32 - 4  # still left of the centre
    assert torch.equal(small[:, :16], torch.zeros(3, 16, 64))  # the margin: the border colour
    torch.testing.assert_close(other[1:], small[1:].flip(-1))  # each sample its own image
    video = torch.stack([image, image.flip(-1)])[None]  # (1, T, 3, H, W)
    torch.testing.assert_close(zoom_out(video, [0.5])[0, 0], small)


def test_a_zooming_source_draws_a_new_scale_per_pass_and_its_batch_applies_it(tmp_path):
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage0_pretrain.yaml",
        [
            f"output_dir={tmp_path}",
            "batch_size=4",
            "data={image: {task: clip, pool: 4, zoom: [0.5, 0.9]}}",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    src = t.sources["image"]
    plain = Source(t.model, "image", SourceConfig(task="clip", pool=4), seed=cfg.seed)
    assert src[1].zoom == src[1].zoom  # resumable: the position decides the scale
    assert 0.5 <= src[1].zoom <= 0.9
    later = next(p for p in range(4, 8) if src.index(p) == src.index(1))  # same scene, next pass
    assert src[later].zoom != src[1].zoom
    assert torch.equal(src[1].input, plain[1].input)  # the shared scene stays unzoomed
    batch = t.micro_batches(0, "image")[0]
    examples = [src[p] for p in range(4)]
    unzoomed = torch.cat([ex.input for ex in examples])
    expected = zoom_out(unzoomed, [ex.zoom for ex in examples])
    torch.testing.assert_close(batch["pixels"], expected)
    assert not torch.allclose(batch["pixels"], unzoomed)
    for bad, msg in (
        ("{image: {task: clip, zoom: [0.0, 1.0]}}", r"data.image.zoom: expected \[lo, hi\]"),
        ("{image: {task: clip, zoom: [0.9, 0.5]}}", r"data.image.zoom: expected \[lo, hi\]"),
        ("{image: {task: caption, zoom: [0.5, 1.0]}}", r"data.image.zoom: only task clip"),
    ):
        with pytest.raises(ConfigError, match=msg):
            load_stage(ROOT / "configs" / "stages" / "stage0_pretrain.yaml", [f"data={bad}"])
