"""The SAM mask decoder: assembled from segment-anything, original .pth layout, prompted by embeddings."""

import pytest
import torch

from onellm.errors import CheckpointError, ConfigError, InputError
from onellm.experts.output.decoders.sam import SamMaskDecoder, build_sam
from onellm.experts.output.decoders.text import CaptionEncoder
from onellm.experts.output.masks import mask_loss
from onellm.modeling.text_tokenizer import tiny_tokenizer

TINY_SAM = dict(
    image_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    heads=2,
    global_attn=(1,),
    window_size=4,
    prompt_dim=32,
    decoder_mlp=64,
    decoder_heads=2,
)


def test_a_sam_saved_as_the_original_pth_loads_back(tmp_path):
    sam = build_sam(**TINY_SAM)
    torch.save(sam.state_dict(), tmp_path / "sam_tiny.pth")
    back = build_sam(**TINY_SAM, checkpoint=tmp_path / "sam_tiny.pth")
    for (n, a), (_, b) in zip(sam.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(CheckpointError, match="does not fit"):
        build_sam(**{**TINY_SAM, "embed_dim": 48}, checkpoint=tmp_path / "sam_tiny.pth")


def test_a_pickled_object_is_refused(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "evil.pth")  # a pickled module
    with pytest.raises(CheckpointError, match="weights_only"):
        build_sam(**TINY_SAM, checkpoint=tmp_path / "evil.pth")


def test_prompts_reach_the_mask_decoder_and_not_the_frozen_image_encoder():
    dec = SamMaskDecoder(build_sam(**TINY_SAM))
    images = torch.rand(2, 3, 48, 48)
    emb, size = dec.embed_images(images)
    assert emb.shape == (2, 32, 8, 8) and size == (64, 64)
    prompts = [torch.randn(2, 32, requires_grad=True), torch.randn(1, 32, requires_grad=True)]
    masks = dec(emb, prompts, size, (48, 48))
    assert [m.shape for m in masks] == [(2, 48, 48), (1, 48, 48)]  # two <seg> -> two masks
    assert not torch.allclose(masks[0][0], masks[0][1])  # each prompt its own mask
    loss = sum(mask_loss(m, torch.rand_like(m) > 0.5) for m in masks)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    assert all(p.grad is None for p in dec.sam.image_encoder.parameters())
    assert any(p.grad is not None for p in dec.sam.mask_decoder.parameters())


def test_mask_loss_is_lisa_weighted_bce_plus_dice():
    logits = torch.tensor([[[10.0, -10.0]]])
    target = torch.tensor([[[1.0, 0.0]]])
    assert mask_loss(logits, target) < 1e-3  # perfect
    wrong = mask_loss(-logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(-logits, target)
    assert wrong == pytest.approx(2.0 * bce.item() + 0.5 * (1 - 1 / 3), rel=1e-3)


def test_point_and_box_prompts_through_sams_prompt_encoder_train_the_image_encoder():
    """Tiny-scale pretraining drives SAM as it is trained: a point or a box in the image's
    pixels, gradients to every part (the image encoder is frozen only by the stages after)."""
    dec = SamMaskDecoder(build_sam(**TINY_SAM))
    dec.sam.image_encoder.requires_grad_(True)
    images = torch.rand(3, 3, 32, 32)  # resized to SAM's 64: prompts scale with it
    points = torch.tensor([[4.0, 4.0], [16.0, 16.0], [28.0, 4.0]])
    logits = dec.prompted(images, points=points)
    assert logits.shape == (3, 32, 32)
    twice = dec.prompted(images, points=points * 2 - 0.5)
    assert not torch.allclose(logits, twice)  # the point matters
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3)
    assert dec.prompted(images, boxes=boxes).shape == (3, 32, 32)
    mask_loss(logits, torch.rand_like(logits) > 0.5).backward()
    assert all(p.grad is not None for p in dec.sam.image_encoder.parameters() if p.requires_grad)
    with pytest.raises(InputError, match="point, box or text prompt"):
        dec.prompted(images)


def test_phrase_prompts_need_a_text_encoder_and_train_it():
    """SAM's text prompts (the tiny decoder's caption encoder): each phrase gives its own
    mask, gradients reach the caption encoder; without one it is a clear error."""
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ConfigError, match="no text encoder"):
        SamMaskDecoder(build_sam(**TINY_SAM)).prompted(images, texts=["the red circle"] * 2)
    text = CaptionEncoder(vocab_size=512, out_dim=32, width=32, length=8)
    dec = SamMaskDecoder(build_sam(**TINY_SAM), text=text)
    with pytest.raises(ConfigError, match="no tokenizer"):
        dec.prompted(images, texts=["the red circle"] * 2)
    text.tokenizer = tiny_tokenizer(512, ("### Human: ", "### Assistant: "))
    a = dec.prompted(images[:1].expand(2, -1, -1, -1), texts=["the red circle", "the blue square"])
    assert a.shape == (2, 64, 64) and not torch.allclose(a[0], a[1])
    mask_loss(a, torch.rand_like(a) > 0.5).backward()
    assert all(p.grad is not None for p in text.parameters())
