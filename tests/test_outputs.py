"""Output experts in the model: <seg> -> masks, <gen> groups -> images, trained by gradient."""

import numpy as np
import pytest
import torch
import yaml

from experts.decoders.sam import mask_loss
from onellm import OneLLM
from onellm.outputs import last_hidden, seg_mask_logits, seg_prompts
from tests.conftest import TINY

OUTPUTS = {
    "seg": {"decoder": {"type": "sam", "image_size": 64, "patch_size": 8, "embed_dim": 32,
                        "depth": 2, "heads": 2, "global_attn": [1], "window_size": 4,
                        "prompt_dim": 32, "decoder_mlp": 64, "decoder_heads": 2}},
    "gen": {"decoder": {"type": "diffusion", "tiny": {"sample_size": 16, "cross_dim": 32},
                        "steps": 3}, "tokens": 4, "head": {"width": 32, "num_queries": 8}},
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = yaml.safe_load(TINY.read_text())
    return OneLLM.from_config({**cfg, "outputs": OUTPUTS}).eval()


def image(h=40, w=48):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def forced(model, token, n):
    """generate kwargs that make the model emit `token` n times."""
    tid = model.output_token_ids[token]
    return {"sequence_bias": {(tid,): 100.0}, "max_new_tokens": n, "min_new_tokens": n}


def test_output_tokens_are_single_ids(model):
    tok = model.text_tokenizer
    for task, i in model.output_token_ids.items():
        assert tok(f"<{task}>", add_special_tokens=False).input_ids == [i]


def test_two_seg_tokens_give_two_masks_at_the_input_resolution(model):
    reply = model.chat(image(), modality="image", prompt="segment the red circle",
                       stop_strings=None, **forced(model, "seg", 2))  # fmt: skip
    assert len(reply.masks) == 2
    assert all(m.dtype == torch.bool and m.shape == (40, 48) for m in reply.masks)
    assert reply.images == []


def test_typed_seg_text_does_not_trigger_the_decoder(model):
    bad = [[i] for i in model.output_token_ids.values()]
    reply = model.chat(image(), modality="image", prompt="<seg> <seg> please", max_new_tokens=3,
                       bad_words_ids=bad, stop_strings=None)  # fmt: skip
    assert reply.masks == [] and reply.images == []


def test_a_group_of_gen_tokens_gives_one_image(model):
    reply = model.chat(
        None, prompt="draw a green square", stop_strings=None, **forced(model, "gen", 4)
    )
    assert len(reply.images) == 1 and reply.images[0].size == (16, 16)


def test_seg_states_reach_the_mask_decoder_with_gradients_to_the_output_experts(model):
    model.zero_grad(set_to_none=True)
    tok = model.text_tokenizer
    seg = model.output_token_ids["seg"]
    ids = torch.tensor([[tok.bos_token_id, 30, 40, seg, 50, seg]])
    hidden, embeds = last_hidden(model, ids, None, {})
    prompts, where = seg_prompts(model, ids, hidden, embeds)
    assert prompts.shape == (2, 32) and where.tolist() == [0, 0]
    pixels = torch.rand(3, 40, 48)
    (logits,) = seg_mask_logits(model, prompts, where, [pixels])
    assert logits.shape == (2, 40, 48)
    mask_loss(logits, torch.rand(2, 40, 48) > 0.5).backward()
    assert all(p.grad is not None for p in model.heads["seg"].parameters())
    assert all(p.grad is None for p in model.decoders["seg"].sam.image_encoder.parameters())
    assert all(p.grad is None for p in model.llm.parameters())  # frozen LLM
    model.zero_grad(set_to_none=True)


def test_a_model_with_outputs_saves_and_loads(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.output_token_ids == model.output_token_ids
    for (n, a), (_, b) in zip(
        model.heads.state_dict().items(), back.heads.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n
    sd_a, sd_b = model.decoders.state_dict(), back.decoders.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_a_short_decoder_stage_lowers_both_decoder_losses(tmp_path):
    from onellm.stage import load_stage
    from onellm.train import Trainer, read_metrics
    from tests.conftest import ROOT

    torch.manual_seed(0)
    OneLLM.from_config(TINY).save_pretrained(tmp_path / "base")
    cfg = load_stage(ROOT / "configs" / "stages" / "stage5_decoders.yaml", [
        f"init_from={tmp_path / 'base'}", f"output_dir={tmp_path / 'run'}", "steps=24",
        "batch_size=4", "log_every=1", "eval.samples=2", "eval.modalities=[image]",
        "data.seg.pool=16", "data.gen.pool=16", "data.image.weight=0", "data.audio.weight=0",
        "trainable=[heads.*, decoders.seg.sam.mask_decoder.*, decoders.gen.unet.*]",
        "optimizer.lr=3e-3", "schedule.warmup_steps=2",
    ])  # fmt: skip
    t = Trainer(cfg, quiet=True)
    t.train()
    records = [r for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    for task in ("seg", "gen"):
        losses = [r["decoder_loss"] for r in records if r["source"] == task]
        assert len(losses) >= 6, task
        assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, (task, losses)
    final = [r for r in read_metrics(cfg.output_dir) if r["event"] == "eval"][-1]
    assert 0 <= final["outputs"]["seg"]["seg_miou"] <= 1
    assert 0 <= final["outputs"]["gen"]["gen_color_accuracy"] <= 1


def test_output_metrics_on_hand_made_examples():
    from onellm.data.tasks import dominant_colour, gen_scene, iou, seg_scene

    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12) and iou(a, a) == 1.0
    assert all(
        dominant_colour(gen_scene(i).target) == gen_scene(i).attrs["colour"] for i in range(30)
    )
    assert dominant_colour(np.full((16, 16, 3), 120, np.uint8)) is None  # nothing drawn
    s = seg_scene(3, "test")
    assert s.prompt == f"segment the {s.attrs['colour']} {s.attrs['shape']}" and s.mask.any()
    assert seg_scene(3, "test").prompt == s.prompt  # deterministic
    assert seg_scene(3, "train").image.tobytes() != s.image.tobytes()  # splits differ


def test_a_seg_about_an_input_without_pixels_gives_no_mask_and_no_error(model):
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    reply = model.chat(wave, modality="audio", prompt="segment it", stop_strings=None,
                       **forced(model, "seg", 1))  # fmt: skip
    assert reply.masks == []


def test_a_short_sam_stage_trains_sam_on_point_prompts_and_nothing_else(tmp_path):
    """Stage 5a: point prompts -> masks; the mask loss falls, the image encoder moves, the
    LLM does not, and the final eval reports the point-prompted mIoU."""
    from onellm.stage import load_stage
    from onellm.train import Trainer, read_metrics
    from tests.conftest import ROOT

    cfg = load_stage(ROOT / "configs" / "stages" / "stage5a_sam_pretrain.yaml", [
        f"init_from={TINY}", f"output_dir={tmp_path / 'run'}", "steps=30", "log_every=1",
        "eval.samples=4", "data.sam.pool=64", "batch_size=8", "optimizer.lr=3e-3",
        "schedule.warmup_steps=2",
    ])  # fmt: skip
    t = Trainer(cfg, quiet=True)
    llm = {n: p.detach().clone() for n, p in t.model.llm.named_parameters()}
    enc = {n: p.detach().clone() for n, p in t.model.decoders["seg"].sam.image_encoder.named_parameters()}  # fmt: skip
    t.train()
    rows = read_metrics(tmp_path / "run")
    losses = [r["loss"] for r in rows if r["event"] == "train"]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    assert all(torch.equal(p, llm[n]) for n, p in t.model.llm.named_parameters())
    moved = t.model.decoders["seg"].sam.image_encoder.named_parameters()
    assert any(not torch.equal(p, enc[n]) for n, p in moved)
    final = [r for r in rows if r["event"] == "eval" and r.get("final")][-1]
    assert 0 <= final["outputs"]["sam"]["sam_point_miou"] <= 1


def test_a_point_prompt_lies_in_its_mask():
    from onellm.data.tasks import point_in, seg_scene

    for i in range(20):
        mask = seg_scene(i).mask
        x, y = point_in(mask, np.random.default_rng(i))
        assert mask[int(y), int(x)]


def test_seg_masks_of_a_batch_equal_those_of_each_image_alone(model):
    from onellm.outputs import seg_mask_logits

    images = [torch.rand(3, 40, 48), None, torch.rand(3, 40, 48)]
    prompts = torch.randn(3, model.heads["seg"].mix.experts[0][-1].out_features)
    where = torch.tensor([0, 2, 2])
    together = seg_mask_logits(model, prompts, where, images)
    alone = seg_mask_logits(model, prompts[1:], torch.tensor([0, 0]), images[2:])
    assert [m.shape for m in together] == [(1, 40, 48), (0, 0, 0), (2, 40, 48)]
    assert torch.allclose(together[2], alone[0], atol=1e-5)
