"""Conformance with numbers made by the official OneLLM code (../shared/conformance)."""

import pytest
import torch
from safetensors.torch import load_file

from bench.official_checkpoint import official_state_dict
from onellm.checkpoints.conformance import onellm_logits
from onellm.checkpoints.convert import from_onellm, load_state_dict, permute_rotary
from onellm.errors import CheckpointError
from tests.conftest import fixture_a

COVERED = ["image", "video", "audio", "rgbd", "rgbn", "imu", "fmri"]
TOL = {"atol": 1e-4, "rtol": 1e-4}  # the fixture README's recommendation


@pytest.fixture(scope="module")
def reference():
    d = fixture_a()
    model = from_onellm(d / "weights.safetensors", llm_heads=4, encoder_heads=2).eval()
    return model, load_file(d / "inputs.safetensors"), load_file(d / "outputs.safetensors")


@pytest.mark.parametrize("modality", COVERED)
@torch.no_grad()
def test_fixture_a_encode_and_logits(reference, modality):
    model, inputs, outputs = reference
    torch.testing.assert_close(
        model.encode(inputs[modality], modality), outputs[f"encode.{modality}"], **TOL
    )
    logits = onellm_logits(model, inputs["tokens"], inputs[modality], modality)
    torch.testing.assert_close(logits, outputs[f"logits.{modality}"], **TOL)


@torch.no_grad()
def test_fixture_a_text_only_logits(reference):
    model, inputs, outputs = reference
    torch.testing.assert_close(
        onellm_logits(model, inputs["tokens"]), outputs["logits.text"], **TOL
    )


@torch.no_grad()
def test_fixture_a_encoder_output_and_routing(reference):
    model, inputs, outputs = reference
    tok = model.tokenizers["audio"]
    feats = model.encoder(tok(inputs["audio"], model.encoder), tok.position_embedding)
    torch.testing.assert_close(feats, outputs["debug.clip_out.audio"], **TOL)
    _, w = model.projection.route(feats, "audio")
    q = model.config.projection.num_queries
    torch.testing.assert_close(w, outputs["debug.routing_weights.audio"][:, :q], **TOL)


def test_sizes_are_read_from_the_weights(reference):
    model, _, _ = reference
    cfg = model.config
    assert (cfg.llm.hidden_size, cfg.llm.vocab_size, cfg.llm.intermediate_size) == (64, 512, 192)
    assert (cfg.encoder.hidden_size, cfg.encoder.image_size, cfg.encoder.patch_size) == (
        64,
        224,
        14,
    )
    p = cfg.projection
    assert (p.num_experts, p.layers_per_expert, p.num_queries, p.ffn_hidden_size) == (3, 8, 30, 192)
    assert cfg.modalities["fmri"] == {"voxels": 300, "tokens": 8}
    assert cfg.modalities["audio"]["frames"] == 1024 and cfg.modalities["imu"]["length"] == 400
    assert set(model.modalities) == {
        "image",
        "video",
        "audio",
        "point",
        "depth",
        "normal",
        "fmri",
        "imu",
    }


def test_pth_checkpoints_load_weights_only(tmp_path, reference):
    model, inputs, outputs = reference
    d = fixture_a()
    sd = load_file(d / "weights.safetensors")
    torch.save({"model": sd}, tmp_path / "consolidated.00-of-01.pth")
    m2 = from_onellm(tmp_path / "consolidated.00-of-01.pth", llm_heads=4, encoder_heads=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(m2.encode(inputs["imu"], "imu"), outputs["encode.imu"], **TOL)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_state_dict(tmp_path / "evil.pth")


def test_missing_and_foreign_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        from_onellm(tmp_path / "nope.pth", llm_heads=4, encoder_heads=2)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a OneLLM checkpoint"):
        from_onellm(tmp_path / "other.pth", llm_heads=4, encoder_heads=2)


def test_rotary_permutation_turns_interleaved_pairs_into_halves():
    heads, d, dim = 2, 8, 16
    w = torch.arange(heads * d, dtype=torch.float32)[:, None].expand(-1, dim)
    rows = permute_rotary(w, heads)[:, 0].long().view(heads, d)
    # head 0: the even rows (pair firsts) come first, then the odd rows (pair seconds)
    assert rows[0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert rows[1].tolist() == [8, 10, 12, 14, 9, 11, 13, 15]


def test_other_sizes_are_read_from_the_weights(tmp_path):
    from safetensors.torch import save_file

    sizes = dict(
        dim=96,
        layers=3,
        vocab=300,
        width=48,
        clip_layers=3,
        patch=16,
        grid=4,
        experts=2,
        expert_layers=3,
        queries=10,
        voxels=100,
        fmri_tokens=4,
    )
    sd = official_state_dict(**sizes)
    save_file(sd, tmp_path / "other.safetensors")
    m = from_onellm(
        tmp_path / "other.safetensors", llm_heads=6, encoder_heads=3, expert_heads=8
    ).eval()
    cfg = m.config
    assert (cfg.llm.hidden_size, cfg.llm.num_hidden_layers, cfg.llm.vocab_size) == (96, 3, 300)
    assert (cfg.encoder.hidden_size, cfg.encoder.num_hidden_layers, cfg.encoder.image_size) == (
        48,
        3,
        64,
    )
    p = cfg.projection
    assert (p.num_experts, p.layers_per_expert, p.num_queries, p.num_heads) == (2, 3, 10, 8)
    # the loaded tensors are the checkpoint's (spot checks, one per part)
    torch.testing.assert_close(m.projection.queries["depth"], sd["llma.resample_tokens.rgbd"])
    torch.testing.assert_close(m.tokenizers["fmri"].proj.weight, sd["llma.conv1.fmri.weight"])
    torch.testing.assert_close(
        m.encoder.clip.encoder.layers[2].self_attn.v_proj.bias,
        sd["llma.clip.visual.transformer.resblocks.2.attn.in_proj_bias"][96:],
    )
    torch.testing.assert_close(
        m.llm.model.layers[2].mlp.down_proj.weight, sd["llma.layers.2.feed_forward.w2.weight"]
    )
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 7]])
        assert onellm_logits(m, ids, torch.randn(1, 3, 64, 64), "image").shape == (1, 3, 300)
        assert m.encode(torch.randn(1, 1, 100), "fmri").shape == (1, 10, 96)
        assert m.encode(torch.randn(1, 1, 128, 1024), "audio").shape == (1, 10, 96)
