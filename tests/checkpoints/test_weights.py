"""Part of a model's weights as one file: `onellm export` writes it, a stage's
`load_weights:` loads it over its starting model, and the same weights give the same bytes."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from onellm import OneLLM
from onellm.checkpoints.weights import export_weights, load_weights, sha256
from onellm.cli.main import main
from onellm.errors import CheckpointError, ConfigError
from onellm.training.prepare import prepare_model
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY

DECODERS = "outputs.*.decoder.*"


def test_export_writes_only_the_named_tensors_and_the_same_bytes_twice(tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    a, names = export_weights(model, [DECODERS], tmp_path / "a.safetensors")
    b, _ = export_weights(model, [DECODERS], tmp_path / "b.safetensors")
    saved = load_file(a)
    assert names == sorted(saved) and all(".decoder." in k for k in saved)
    assert {k for k in model.state_dict() if k.startswith("outputs.") and ".decoder." in k} == set(
        saved
    )
    assert sha256(a) == sha256(b)
    with pytest.raises(ConfigError, match="--keys"):
        export_weights(model, ["nothing.*"], tmp_path / "c.safetensors")


def test_a_stage_loads_its_weights_over_the_starting_model(tmp_path):
    torch.manual_seed(1)
    donor = OneLLM.from_config(TINY)
    path, names = export_weights(donor, [DECODERS], tmp_path / "dec.safetensors")
    cfg = load_stage(
        ROOT / "configs" / "stages" / "stage1_image.yaml",
        ["init_from=tiny", f"output_dir={tmp_path}/run", f"load_weights=[{path}]"],
    )
    torch.manual_seed(2)  # another random model: only the decoders are the donor's
    model, _ = prepare_model(cfg, torch.device("cpu"))
    got, want = model.state_dict(), donor.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in names)
    head = "outputs.seg.head.mix.experts.0.0.weight"
    assert not torch.equal(got[head], want[head])


def test_weights_that_do_not_fit_load_nothing(tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = "outputs.seg.decoder.sam.mask_decoder.iou_token.weight"
    path = tmp_path / "bad.safetensors"
    save_file({good: torch.ones_like(before[good]), "outputs.seg.nope": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: 1 tensors do not fit.*nope"):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="expected a safetensors file"):
        load_weights(model, tmp_path / "missing.safetensors")


def test_the_export_verb_writes_a_run_s_decoders(tmp_path, capsys):
    torch.manual_seed(0)
    OneLLM.from_config(TINY).save_pretrained(tmp_path / "run")
    out = tmp_path / "dec.safetensors"
    assert main(["export", str(tmp_path / "run"), str(out), "--keys", DECODERS]) == 0
    said = capsys.readouterr().out
    assert f"sha256 {sha256(out)}" in said and str(out) in said
    assert all(".decoder." in k for k in load_file(out))
