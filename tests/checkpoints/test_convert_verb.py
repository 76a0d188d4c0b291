"""`onellm convert`: an official checkpoint, memory-mapped, written once as a saved run."""

import pytest
import torch
from safetensors.torch import load_file

from onellm import OneLLM
from onellm.checkpoints import convert
from onellm.checkpoints.convert import from_onellm, load_state_dict
from onellm.cli.main import main
from tests.conftest import fixture_a

TOL = {"atol": 1e-4, "rtol": 1e-4}  # the fixture README's recommendation


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The reference fixture's weights as the official code saves them: torch.save's zip."""
    d = fixture_a()
    path = tmp_path_factory.mktemp("official") / "consolidated.00-of-01.pth"
    torch.save({"model": load_file(d / "weights.safetensors")}, path)
    return path, load_file(d / "inputs.safetensors"), load_file(d / "outputs.safetensors")


def test_convert_writes_a_run_that_loads_and_matches_the_reference(official, tmp_path, capsys):
    path, inputs, outputs = official
    out = tmp_path / "onellm-7b"
    assert main(["convert", str(path), str(out), "--llm-heads", "4", "--encoder-heads", "2",
                 "--dtype", "float32"]) == 0  # fmt: skip
    assert "peak memory" in capsys.readouterr().out
    # safetensors and JSON only: nothing that unpickles
    assert not [p for p in out.rglob("*") if p.suffix in (".pth", ".bin", ".pt", ".pkl")]
    assert list((out / "llm").glob("*.safetensors"))
    model = OneLLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(inputs["imu"], "imu"), outputs["encode.imu"], **TOL)


def test_the_checkpoint_is_mapped_and_its_tensors_assigned_not_copied(official, monkeypatch):
    path, _, _ = official
    loaded = {}

    def keep(p):
        loaded.update(load_state_dict(p))
        return loaded

    monkeypatch.setattr(convert, "load_state_dict", keep)
    model = from_onellm(path, llm_heads=4, encoder_heads=2)
    # the model's LLM weight is the checkpoint's tensor itself (one storage), not a copy
    weight = model.llm.model.layers[0].mlp.down_proj.weight
    assert weight.data_ptr() == loaded["layers.0.feed_forward.w2.weight"].data_ptr()
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # rotary tables, position ids: built
    assert not weight.requires_grad  # frozen, as a built LLM is


def test_a_legacy_pth_is_read_whole(official, tmp_path):
    path, inputs, outputs = official
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    model = from_onellm(legacy, llm_heads=4, encoder_heads=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(inputs["imu"], "imu"), outputs["encode.imu"], **TOL)


def test_bad_paths_are_refused_before_torch_loads(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o")]) == 2
    assert "expected a checkpoint file" in capsys.readouterr().err
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"PK\x03\x04")
    assert main(["convert", str(ckpt), str(tmp_path / "full")]) == 2
    assert "new or empty folder" in capsys.readouterr().err
