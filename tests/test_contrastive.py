"""Stage 0's contrastive CLIP training (onellm/contrastive.py), on images and video clips."""

import torch

from onellm.contrastive import ContrastiveHead
from onellm.model import OneLLM
from onellm.stage import load_stage
from onellm.train import Trainer, read_metrics
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
    cfg = load_stage(ROOT / "configs" / "stages" / "stage0_pretrain.yaml", [
        f"output_dir={tmp_path / 'run'}", "steps=40", "batch_size=16", "log_every=1",
        "data={image: {task: clip, pool: 64}, video: {task: clip, pool: 64, batch_size: 8}}",
        "trainable=[encoder.*]",
    ])  # fmt: skip
    t = Trainer(cfg, quiet=True)
    llm = {n: p.detach().clone() for n, p in t.model.llm.named_parameters()}
    t.train()
    rows = [r for r in read_metrics(tmp_path / "run") if r["event"] == "train"]
    for source in ("image", "video"):
        losses = [r["loss"] for r in rows if r["source"] == source]
        assert len(losses) >= 6, source
        assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), (source, losses)
    assert all(torch.equal(p, llm[n]) for n, p in t.model.llm.named_parameters())
