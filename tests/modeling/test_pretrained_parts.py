"""Tiny CLIP and Llama saved with save_pretrained load through the same path as real ones."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import CheckpointError
from tests.conftest import TINY, random_input


def test_saved_clip_and_llama_dirs_load_as_the_same_model(tmp_path):
    torch.manual_seed(0)
    a = OneLLM.from_config(TINY).eval()
    a.encoder.clip.save_pretrained(tmp_path / "clip")
    a.llm.save_pretrained(tmp_path / "llama")
    b = OneLLM.from_config(
        TINY, [f"encoder.path={tmp_path / 'clip'}", f"llm.path={tmp_path / 'llama'}"]
    ).eval()
    # the base models came from disk; copy the (random) trainable parts across
    b.projection.load_state_dict(a.projection.state_dict())
    b.tokenizers.load_state_dict(a.tokenizers.state_dict())
    ids = torch.tensor([[1, 5, 9, 11]])
    for modality in ["image", "audio"]:
        x = random_input(a, modality, batch=1)
        torch.testing.assert_close(
            onellm_logits(b, ids, x, modality), onellm_logits(a, ids, x, modality), rtol=0, atol=0
        )
    assert not any(p.requires_grad for p in b.encoder.parameters())
    assert not any(p.requires_grad for p in b.llm.parameters())


def test_full_clip_model_dir_loads_its_vision_tower(tmp_path):
    """Real CLIP releases (openai/clip-vit-large-patch14) are CLIPModel dirs with a text tower."""
    cfg = CLIPConfig(
        vision_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            image_size=64,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=99,
            max_position_embeddings=16,
        ),
        projection_dim=16,
    )
    full = CLIPModel(cfg)
    full.save_pretrained(tmp_path / "clip-full")
    m = OneLLM.from_config(TINY, [f"encoder.path={tmp_path / 'clip-full'}"])
    theirs = full.vision_model.embeddings.patch_embedding.weight
    torch.testing.assert_close(m.encoder.clip.embeddings.patch_embedding.weight, theirs)
    torch.testing.assert_close(
        m.encoder.clip.encoder.layers[1].mlp.fc2.weight,
        full.vision_model.encoder.layers[1].mlp.fc2.weight,
    )


def test_missing_checkpoint_dirs_raise(tmp_path):
    with pytest.raises(CheckpointError, match="encoder: checkpoint directory not found"):
        OneLLM.from_config(TINY, [f"encoder.path={tmp_path / 'nope'}"])
    with pytest.raises(CheckpointError, match="llm: checkpoint directory not found"):
        OneLLM.from_config(TINY, [f"llm.path={tmp_path / 'nope'}"])
