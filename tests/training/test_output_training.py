"""Training the output experts: decoder stages lower both decoder losses and move only
what they name, the align loss, output-token rows, and the output tasks' metrics."""

import numpy as np
import pytest
import torch

from onellm import OneLLM
from onellm.data import output_scenes as tasks
from onellm.data.output_scenes import dominant_colour, gen_scene, iou, point_in, seg_scene
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY


def test_a_short_decoder_stage_lowers_both_decoder_losses(tmp_path):
    torch.manual_seed(0)
    OneLLM.from_config(TINY).save_pretrained(tmp_path / "base")
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage5_decoders.yaml",
        [
            f"init_from={tmp_path / 'base'}",
            f"output_dir={tmp_path / 'run'}",
            "steps=24",
            "batch_size=4",
            "log_every=1",
            "eval.samples=2",
            "eval.modalities=[image]",
            "data.seg.pool=16",
            "data.gen.pool=16",
            "data.image.weight=0",
            "data.audio.weight=0",
            "model_overrides=[]",  # the mask and denoising losses too (the demo: L2 alone)
            "trainable=[outputs.*.head.*, outputs.seg.decoder.sam.mask_decoder.*, outputs.gen.decoder.unet.*]",
            "optimizer.lr=3e-3",
            "schedule.warmup_steps=2",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    t.train()
    t.save()
    records = [r for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    for task in ("seg", "gen"):
        losses = [r["decoder_loss"] for r in records if r["source"] == task]
        assert len(losses) >= 6, task
        assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, (task, losses)
    final = [r for r in read_metrics(cfg.output_dir) if r["event"] == "eval"][-1]
    assert 0 <= final["outputs"]["seg"]["seg_miou"] <= 1
    assert 0 <= final["outputs"]["gen"]["gen_color_accuracy"] <= 1


def test_output_metrics_on_hand_made_examples():
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


def test_a_short_decoder_pretraining_trains_both_decoders_and_nothing_else(tmp_path):
    """Stage 5a: point / phrase prompts -> masks, captions -> images; both decoder losses
    fall, SAM's image encoder, both caption encoders and the UNet move, the LLM does not,
    and the final eval reports each decoder's own metrics."""
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage5a_decoder_pretrain.yaml",
        [
            f"init_from={TINY}",
            f"output_dir={tmp_path / 'run'}",
            "steps=40",
            "log_every=1",
            "eval.samples=4",
            "data.sam.pool=64",
            "data.t2i.pool=64",
            "data.t2i.batch_size=8",
            "batch_size=8",
            "optimizer.lr=3e-3",
            "schedule.warmup_steps=2",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.train()
    t.save()
    rows = read_metrics(tmp_path / "run")
    for src in ("sam", "t2i"):
        losses = [r["loss"] for r in rows if r["event"] == "train" and r["source"] == src]
        assert len(losses) >= 10 and sum(losses[-4:]) < 0.8 * sum(losses[:4]), (src, losses)
    moved = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    for part in (
        "outputs.seg.decoder.sam.image_encoder.",
        "outputs.seg.decoder.text.",
        "outputs.gen.decoder.text.",
        "outputs.gen.decoder.unet.",
    ):
        assert any(n.startswith(part) for n in moved), part
    assert not any(n.startswith(("llm.", "encoder.", "projection.")) for n in moved)
    assert not any(".head." in n for n in moved)
    final = [r for r in rows if r["event"] == "eval" and r.get("final")][-1]["outputs"]
    for task, key in (
        ("sam", "sam_point_miou"),
        ("sam", "sam_text_miou"),
        ("t2i", "t2i_color_accuracy"),
    ):
        assert 0 <= final[task][key] <= 1


def test_a_point_prompt_lies_in_its_mask():
    for i in range(20):
        mask = seg_scene(i).mask
        x, y = point_in(mask, np.random.default_rng(i))
        assert mask[int(y), int(x)]


def align_mse(task, expert, ids, hidden, embeds, phrase) -> torch.Tensor:
    """The MSE from the head's output to its decoder's text encoder on `phrase`."""
    if task == "seg":
        got = expert.prompts(ids, hidden, embeds)[0]
        want = expert.decoder.text_prompts([phrase])
    else:
        got = expert.conditions(ids, hidden, embeds)[0]
        want = expert.decoder.caption_states([phrase])
    return torch.nn.functional.mse_loss(got, want.expand_as(got))


def test_align_adds_the_l2_from_each_head_to_its_decoders_text_encoder():
    """outputs.<task>.loss.align x MSE(head output, the decoder's text encoder on the named
    phrase) is added to the decoder loss; the text encoders read the LLM's tokenizer."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY).eval()
    tok = model.text_tokenizer
    seg, gen = tasks.seg_scene(0, size=64), tasks.gen_scene(0, size=32)
    for task, sc in (("seg", seg), ("gen", gen)):
        text = f"### Human: {sc.prompt}\n### Assistant: {sc.answer}"
        ids = torch.tensor([tok(text).input_ids])
        targets = {"phrases": [sc.phrase]}
        if task == "seg":
            targets |= {
                "pixels": [model.modalities["image"].pixels(sc.image)],
                "masks": [torch.from_numpy(sc.mask)],
            }
        else:
            targets["images"] = torch.from_numpy(sc.target).permute(2, 0, 1)[None].float() / 255
        expert = model.outputs[task]
        with torch.no_grad():
            out = model.llm(input_ids=ids, output_hidden_states=True)
            hidden, embeds = out.hidden_states[-1], out.hidden_states[0]
            losses = {}
            for align in (0.0, 2.0):
                expert.align = align
                torch.manual_seed(1)  # the same diffusion noise both times
                losses[align] = expert.loss(ids, hidden, embeds, targets)
            mse = align_mse(task, expert, ids, hidden, embeds, sc.phrase)
        assert mse > 0
        assert torch.allclose(losses[2.0] - losses[0.0], 2 * mse, rtol=1e-4), task


def test_output_tokens_train_only_their_own_embedding_and_lm_head_rows(tmp_path):
    """`trainable: [@output_tokens]` moves the <seg>/<gen> rows of the input embeddings and
    the lm_head, and no other row (LISA trains them; the LoRA then need not bend states)."""
    torch.manual_seed(0)
    OneLLM.from_config(TINY).save_pretrained(tmp_path / "base")
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage5_decoders.yaml",
        [
            f"init_from={tmp_path / 'base'}",
            f"output_dir={tmp_path / 'run'}",
            "steps=4",
            "batch_size=2",
            "data.gen.batch_size=2",
            "eval.samples=1",
            "eval.modalities=[]",
            "data.seg.pool=4",
            "data.gen.pool=4",
            'trainable=["@output_tokens"]',
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    tables = [t.model.llm.get_input_embeddings().weight, t.model.llm.get_output_embeddings().weight]
    before = [w.detach().clone() for w in tables]
    t.train()
    t.save()
    ids = sorted(t.model.outputs.token_ids.values())
    for w, b in zip(tables, before, strict=True):
        changed = (w.detach() != b).any(-1).nonzero().flatten().tolist()
        assert changed == ids


def test_the_demo_draws_a_mask_over_its_input():
    from onellm.tasks.seg import overlay

    sc = seg_scene(3, "test", size=64)
    drawn = overlay(sc.image, sc.mask)
    outside, inside = ~sc.mask.astype(bool), sc.mask.astype(bool)
    assert np.array_equal(drawn[outside], sc.image[outside])
    assert (drawn[inside] != sc.image[inside]).any(axis=-1).all()
    assert (drawn[inside] == (255, 0, 255)).all(axis=-1).sum() >= 4  # the mask's edge, solid


def test_with_its_decoder_loss_at_zero_a_head_learns_from_the_l2_alone(monkeypatch):
    """outputs.<task>.loss with the decoder's weights at 0 (the demo's stage 5): the loss
    is align x the MSE to the text encoder's reading, and neither decoder runs."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY).eval()
    tok = model.text_tokenizer
    seg, gen = tasks.seg_scene(0, size=64), tasks.gen_scene(0, size=32)
    for task, sc in (("seg", seg), ("gen", gen)):
        expert = model.outputs[task]
        expert.weights = {k: 0.0 for k in expert.weights}
        expert.align = 1.5
        text = f"### Human: {sc.prompt}\n### Assistant: {sc.answer}"
        ids = torch.tensor([tok(text).input_ids])

        def no_decoder(*a, task=task, **k):
            raise AssertionError(f"{task}: the decoder ran")

        monkeypatch.setattr(expert.decoder, "forward", no_decoder)
        monkeypatch.setattr(expert.decoder, "loss", no_decoder, raising=False)
        with torch.no_grad():
            out = model.llm(input_ids=ids, output_hidden_states=True)
            hidden, embeds = out.hidden_states[-1], out.hidden_states[0]
            loss = expert.loss(ids, hidden, embeds, {"phrases": [sc.phrase]})
            mse = align_mse(task, expert, ids, hidden, embeds, sc.phrase)
        assert torch.allclose(loss, 1.5 * mse, rtol=1e-5), task
