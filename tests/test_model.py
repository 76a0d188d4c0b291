import sys

import pytest
import torch

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import ConfigError, InputError
from tests.conftest import TINY, random_input

MODALITIES = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]


def ids(batch=2, length=7):
    x = torch.randint(3, 400, (batch, length))  # below the placeholder ids
    x[:, 0] = 1
    return x


def laid_out(model, text, modality, labels=None):
    """Token rows with `modality`'s placeholder run after BOS (the one layout path)."""
    return model.layout.widen(text, [modality], text if labels is None else labels)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return OneLLM.from_config(TINY).train()


@pytest.mark.parametrize("modality", MODALITIES)
def test_forward_and_backward_through_the_whole_chain(model, modality):
    x = random_input(model, modality)
    text, labels = laid_out(model, ids(), modality)
    out = model(text, labels=labels, inputs={modality: x})
    q = model.config.projection.num_queries
    assert out.logits.shape == (2, 7 + q + 2, 512)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # frozen parts get no gradient
    for name, p in [*model.encoder.named_parameters(), *model.llm.named_parameters()]:
        assert p.grad is None, name
    # the modality's own trainable parts do
    proj = model.projection
    assert proj.queries[modality].grad is not None and proj.queries[modality].grad.abs().sum() > 0
    assert proj.out_proj[modality][0].weight.grad.abs().sum() > 0
    assert proj.routers[modality].mlp.fc1.weight.grad.abs().sum() > 0
    assert all(e.layers[0].q_proj.weight.grad is not None for e in proj.experts)
    for p in model.tokenizers[modality].parameters():  # gradients flow through the frozen encoder
        assert p.grad is not None and p.grad.abs().sum() > 0
    # other modalities' parameters are untouched
    other = next(m for m in MODALITIES if m != modality)
    assert proj.queries[other].grad is None


def test_defaults_freeze_encoder_and_llm_and_train_the_rest(model):
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.projection.parameters())
    assert all(p.requires_grad for p in model.tokenizers.parameters())


def test_sequence_layout_is_bos_start_queries_end_text(model):
    x = random_input(model, "image")
    text = ids()
    with_block, _ = laid_out(model, text, "image")
    got = model.embed(with_block, {"image": model.modality_block(x, "image")})
    emb = model.llm.get_input_embeddings()(text)
    q = model.config.projection.num_queries
    torch.testing.assert_close(got[:, 0], emb[:, 0])
    torch.testing.assert_close(got[:, 1], model.projection.start_tag["image"][0, 0].expand(2, -1))
    torch.testing.assert_close(got[:, 2 : 2 + q], model.encode(x, "image"))
    torch.testing.assert_close(got[:, q + 2], model.projection.end_tag["image"][0, 0].expand(2, -1))
    torch.testing.assert_close(got[:, q + 3 :], emb[:, 1:])


def test_loss_only_on_target_text_tokens(model):
    x = random_input(model, "audio")
    text = ids()
    labels = text.clone()
    labels[:, :4] = -100  # prompt
    widened, labels = laid_out(model, text, "audio", labels)
    out = model(widened, labels=labels, inputs={"audio": x})
    n = model.config.projection.num_queries + 2
    # recompute CE by hand over the text targets only
    logits = out.logits[:, n + 3 : n + 6]  # positions predicting text tokens 4..6
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), text[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)


def test_logits_are_aligned_like_onellm(model):
    x = random_input(model, "imu")
    text = ids()
    full = model(laid_out(model, text, "imu")[0], inputs={"imu": x}).logits
    n = model.config.projection.num_queries + 2
    torch.testing.assert_close(onellm_logits(model, text, x, "imu"), full[:, n:])
    assert onellm_logits(model, text).shape == (2, 7, 512)


def test_frozen_image_path_runs_outside_autograd(model):
    x = random_input(model, "image")
    feats_need_grad = []
    h = model.encoder.register_forward_hook(lambda m, i, o: feats_need_grad.append(o.requires_grad))
    model.encode(x, "image")
    model.encode(random_input(model, "audio"), "audio")
    h.remove()
    assert feats_need_grad == [False, True]  # image: nothing before the encoder trains


def test_video_frames_are_encoded_then_mean_pooled(model):
    x = random_input(model, "video", frames=3)
    tokens = model.tokenizers["video"](x, model.encoder)
    pooled = model.encoder(tokens, None)
    per_frame = torch.stack([model.encoder(tokens[:, t : t + 1], None) for t in range(3)])
    torch.testing.assert_close(pooled, per_frame.mean(0))


def test_video_motion_tokens_start_as_onellms_and_learn_direction(model):
    x = random_input(model, "video", frames=3)
    backwards = x.flip(1)
    # zero motion weights: frames encode as image's do, so order is lost as in OneLLM
    torch.testing.assert_close(model.encode(x, "video"), model.encode(backwards, "video"))
    plain = OneLLM.from_config(TINY, ["modalities.video={frames: 2, motion: false}"])
    assert not list(plain.tokenizers["video"].parameters())
    tok = model.tokenizers["video"]
    assert tok.motion.weight.requires_grad
    with torch.no_grad():
        tok.motion.weight.normal_(0, 0.05)
    assert not torch.allclose(model.encode(x, "video"), model.encode(backwards, "video"))
    still = x[:, :1].expand_as(x)  # a still clip has no change to add
    enc, image = model.encoder, model.tokenizers["image"]
    torch.testing.assert_close(enc(tok(still, enc), None), enc(image(x[:, 0], enc), None))


def test_rgbd_and_rgbn_are_accepted_names(model):
    x = random_input(model, "depth")
    torch.testing.assert_close(model.encode(x, "rgbd"), model.encode(x, "depth"))
    y = random_input(model, "normal")
    torch.testing.assert_close(model.encode(y, "rgbn"), model.encode(y, "normal"))


def test_topk_router_from_config():
    m = OneLLM.from_config(TINY, ["projection.router={type: topk, k: 1}"])
    _, w = m.projection.route(torch.randn(2, 17, 64), "image")
    assert ((w > 0).sum(-1) == 1).all()


def test_placeholder_count_is_checked(model):
    x = random_input(model, "image")
    text, _ = laid_out(model, ids(), "image")
    block = model.modality_block(x, "image")
    with pytest.raises(
        InputError,
        match=r"^image: expected 2 input\(s\) for the image placeholders in the text, got 1",
    ):
        model.embed(text, {"image": block[:1]})
    with pytest.raises(
        InputError, match=r"^image: expected an input for its placeholder in the text, got none"
    ):
        model.embed(text)


def test_placeholders_are_single_tokenizer_ids(model):
    tok = model.text_tokenizer
    for key, pid in model.layout.placeholder_ids.items():
        assert tok(f"<{key}>", add_special_tokens=False).input_ids == [pid]
    assert len(set(model.layout.placeholder_ids.values())) == len(model.modalities)


def test_modality_tokens_start_at_the_llms_embedding_scale(model):
    words = model.llm.get_input_embeddings().weight.norm(dim=-1).mean()
    block = model.modality_block(random_input(model, "image"), "image").norm(dim=-1).mean()
    assert 0.3 < float(block / words) < 3  # OneLLM's init would be ~40x


def test_random_position_tables_tell_positions_apart(model):
    from onellm.modeling.positions import sincos_2d

    table = model.encoder.position_embedding[1:]  # patches (the class slot is row 0)
    sims = (
        torch.nn.functional.normalize(table, dim=-1)
        @ torch.nn.functional.normalize(table, dim=-1).T
    )
    off_diagonal = sims - torch.eye(len(table))
    assert off_diagonal.max() < 0.99  # no two patches share a position code
    assert torch.equal(model.encoder.position_embedding[0], torch.zeros(table.shape[1]))
    assert sincos_2d(3, 4, 8).shape == (12, 8)
    pos = model.tokenizers["audio"].position_embedding
    assert (
        pos.shape[0]
        == model.tokenizers["audio"](random_input(model, "audio"), model.encoder).shape[2] + 1
    )


def test_flash_attention_asked_without_flash_attn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the flash extra .*pip install 'onellm\[flash\]'"):
        OneLLM.from_config(TINY, ["llm.attn_implementation=flash_attention_2"])
