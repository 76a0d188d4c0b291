"""Every projection kind (PROJECTIONS, onellm/modeling/projection.py) through the same suite, then what is each
kind's own: the perceiver over any number of frames, the MLP over every encoder token."""

import pytest
import torch

from onellm import OneLLM
from onellm.errors import ConfigError, InputError, RegistryError
from onellm.experts.projection.perceiver import PerceiverProjection, PerceiverResampler
from onellm.registry import PROJECTIONS
from tests.conftest import TINY, random_input

KINDS = {"upm": [], "perceiver": ["projection.options={layers: 2}"], "mlp": []}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_model(request):
    torch.manual_seed(0)
    kind = request.param
    return kind, OneLLM.from_config(TINY, [f"projection.type={kind}", *KINDS[kind]]).eval()


def test_kinds_are_registered_and_unknown_ones_refused_by_name():
    assert set(PROJECTIONS.names()) >= {"upm", "perceiver", "mlp"}
    with pytest.raises(RegistryError, match="unknown projection kind 'qformer'; registered: .*mlp"):
        OneLLM.from_config(TINY, ["projection.type=qformer"])
    with pytest.raises(ConfigError, match="unknown key 'projection.options.depth'"):
        OneLLM.from_config(TINY, ["projection.type=perceiver", "projection.options={depth: 3}"])


def test_each_kind_gives_its_run_of_tokens_and_the_llm_takes_it(kind_model):
    kind, model = kind_model
    for m in ("image", "audio", "imu"):
        x = random_input(model, m)
        tokens = model.encode(x, m)
        # query kinds give num_queries; the MLP gives every encoder token (S+1)
        n = model.features(x, m).shape[-2] if kind == "mlp" else model.config.projection.num_queries
        assert tokens.shape == (2, n, model.llm.config.hidden_size)
        assert model.layout.run_lengths[m] == n + 2
        ids, _ = model.layout.row([("What is it?", False)], [m])
        out = model(torch.tensor([ids]), inputs={m: x[:1]})
        assert out.logits.shape[1] == len(ids)


def test_gradients_reach_the_projection_and_not_the_frozen_parts(kind_model):
    kind, model = kind_model
    x = random_input(model, "image")
    model.projection.requires_grad_(True)
    try:
        model.encode(x, "image").square().mean().backward()
        grads = {n: p.grad for n, p in model.projection.named_parameters()}
        assert any(g is not None and g.abs().sum() > 0 for g in grads.values()), kind
        shared = [
            n
            for n in grads
            if "image" not in n and "." in n and n.split(".")[0] in ("experts", "resampler", "mlp")
        ]
        assert all(grads[n] is not None for n in shared), f"{kind}: a shared block got no gradient"
        assert all(p.grad is None for p in model.llm.parameters())
        assert all(p.grad is None for p in model.encoder.parameters())
    finally:
        model.projection.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def test_each_kind_saves_and_loads_to_the_same_tokens(kind_model, tmp_path):
    kind, model = kind_model
    with torch.no_grad():
        for p in model.projection.parameters():  # not the initial values
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / kind)
    back = OneLLM.from_pretrained(tmp_path / kind).eval()
    assert back.config.projection.type == kind
    x = random_input(model, "video", frames=3)
    torch.testing.assert_close(back.encode(x, "video"), model.encode(x, "video"), rtol=0, atol=0)


def test_the_perceiver_reads_one_frame_or_four_and_knows_their_order():
    torch.manual_seed(0)
    p = PerceiverProjection(width=16, llm_width=24, num_queries=5, layers=2, num_heads=4)
    p.add_modality("video", output_scale=1.0)
    with torch.no_grad():
        p.time.normal_()  # trained time embeddings (zero at the start)
    one, four = torch.randn(2, 1, 9, 16), torch.randn(2, 4, 9, 16)
    assert p(one, "video").shape == p(four, "video").shape == (2, 5, 24)
    assert p(one[:, 0], "video").shape == (2, 5, 24)  # pooled features (B, S+1, W) too
    assert not torch.allclose(p(four, "video"), p(four.flip(1), "video"))  # order matters
    with pytest.raises(ValueError, match="at most 64 frames, got 65"):
        p(torch.randn(1, 65, 9, 16), "video")


def test_a_perceiver_model_feeds_it_every_frame(tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, ["projection.type=perceiver"]).eval()
    x = random_input(model, "video", frames=4)
    assert model.features(x, "video").shape[:2] == (2, 4)  # not mean-pooled
    assert model.encode(x, "video").shape == (2, 8, 128)


def test_the_resampler_ignores_masked_media():
    torch.manual_seed(0)
    r = PerceiverResampler(width=16, layers=2, heads=4, head_dim=4)
    media, latents = torch.randn(1, 6, 16), torch.randn(1, 3, 16)
    valid = torch.tensor([[True, True, True, False, False, False]])
    changed = media.clone()
    changed[:, 3:] = 100.0  # what the mask hides may be anything
    torch.testing.assert_close(r(media, latents, valid), r(changed, latents, valid))


def test_single_modalities_can_take_another_kind(tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(
        TINY, ["projection.by_modality={image: {type: mlp}, audio: {type: perceiver, layers: 1}}"]
    ).eval()
    assert set(model.projections) == {"mlp", "perceiver"}
    assert model.projector("image") is model.projections["mlp"]
    assert model.projector("video") is model.projection  # the UPM for the rest
    assert (
        model.layout.run_lengths["image"] == 65 + 2 and model.layout.run_lengths["video"] == 8 + 2
    )
    assert "image" not in model.projection.routes and "video" in model.projection.routes
    x = {m: random_input(model, m, batch=1) for m in ("image", "audio", "video")}
    ids, _ = model.layout.row([("Compare <image> with <audio> and <video>.", False)], list(x))
    logits = model(torch.tensor([ids]), inputs=x).logits
    assert logits.shape[1] == len(ids)
    with pytest.raises(
        InputError, match="image goes through the mlp projection, which has no router"
    ):
        model.routing_report("image", x["image"])
    model.save_pretrained(tmp_path / "mixed")
    back = OneLLM.from_pretrained(tmp_path / "mixed").eval()
    torch.testing.assert_close(back(torch.tensor([ids]), inputs=x).logits, logits, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="the mlp kind is shared; its options must match"):
        OneLLM.from_config(
            TINY, ["projection.by_modality={image: {type: mlp}, audio: {type: mlp, hidden: 32}}"]
        )
