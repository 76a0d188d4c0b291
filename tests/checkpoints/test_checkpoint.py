import pytest
import torch

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import CheckpointError
from tests.conftest import TINY, random_input

IDS = torch.tensor([[1, 5, 9, 11, 20]])


def logits_all(model):
    torch.manual_seed(1)
    return {
        m: onellm_logits(model, IDS, random_input(model, m, batch=1), m)
        for m in ("image", "audio", "fmri")
    }


def assert_same_logits(a, b):
    la, lb = logits_all(a), logits_all(b)
    for m in la:
        torch.testing.assert_close(la[m], lb[m], rtol=0, atol=0)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    m = OneLLM.from_config(TINY).eval()
    with torch.no_grad():  # move the trainable parts off their init, as training would
        for p in m.projection.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


def test_save_and_load_give_identical_logits(trained, tmp_path):
    trained.save_pretrained(tmp_path / "run")
    loaded = OneLLM.from_pretrained(tmp_path / "run").eval()
    assert_same_logits(trained, loaded)
    assert loaded.layout.placeholder_ids == trained.layout.placeholder_ids
    assert (
        loaded.text_tokenizer("a red circle").input_ids
        == trained.text_tokenizer("a red circle").input_ids
    )


def test_lora_adapters_are_saved_and_loaded_as_peft_does(trained, tmp_path):
    trained.add_lora(r=4, alpha=8)
    assert not any(p.requires_grad for n, p in trained.llm.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for n, p in trained.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # LoRA B starts at zero; make the adapter matter
    trained.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "lora" / "adapter_model.safetensors").is_file()
    loaded = OneLLM.from_pretrained(tmp_path / "run").eval()
    assert_same_logits(trained, loaded)
    with_adapter = logits_all(loaded)["image"]
    with loaded.llm.disable_adapter():
        assert not torch.allclose(logits_all(loaded)["image"], with_adapter)


def test_base_models_can_be_referenced_by_path(trained, tmp_path):
    trained.encoder.clip.save_pretrained(tmp_path / "clip")
    trained.llm.save_pretrained(tmp_path / "llama")
    trained.text_tokenizer.save_pretrained(tmp_path / "llama")  # as an HF model dir holds it
    ref = OneLLM.from_config(
        TINY, [f"encoder.path={tmp_path / 'clip'}", f"llm.path={tmp_path / 'llama'}"]
    ).eval()
    ref.load_state_dict(trained.state_dict())
    ref.save_pretrained(tmp_path / "run", base="reference")
    assert not (tmp_path / "run" / "llm").exists() and not (tmp_path / "run" / "encoder").exists()
    assert_same_logits(trained, OneLLM.from_pretrained(tmp_path / "run").eval())
    with pytest.raises(CheckpointError, match="base='reference' needs encoder.path"):
        trained.save_pretrained(tmp_path / "run2", base="reference")


def test_nothing_saved_needs_unpickling(trained, tmp_path):
    trained.add_lora()
    trained.save_pretrained(tmp_path / "run")
    suffixes = {p.suffix for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".yaml", ".jinja", ".txt", ".model", ".md"}, (
        suffixes
    )


def test_loading_something_else_raises(tmp_path):
    with pytest.raises(CheckpointError, match="not a saved onellm model"):
        OneLLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_model_safetensors_is_a_checkpoint_error_naming_it(trained, tmp_path, damage):
    trained.save_pretrained(tmp_path / "run")
    path = tmp_path / "run" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: expected a complete safetensors"
    ):
        OneLLM.from_pretrained(tmp_path / "run")
