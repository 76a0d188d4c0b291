"""Every shipped modality through the same suite: raw forms -> input_shape -> tokens."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onellm import OneLLM
from onellm.errors import InputError
from onellm.modeling.modality import find_modality
from onellm.registry import MODALITIES
from tests.conftest import ROOT, random_input

rng = np.random.default_rng(0)
RAW = {
    "image": lambda: Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)),
    "video": lambda: rng.integers(0, 255, (5, 40, 60, 3), dtype=np.uint8),
    "audio": lambda: rng.standard_normal(16000).astype(np.float32) * 0.1,
    "point": lambda: rng.standard_normal((500, 6)).astype(np.float32),
    "depth": lambda: (rng.random((40, 40, 3)).astype(np.float32), rng.random((40, 40)) * 5),
    "normal": lambda: {
        "rgb": rng.random((40, 40, 3)).astype(np.float32),
        "normal": rng.uniform(-1, 1, (40, 40, 3)),
    },
    "imu": lambda: rng.standard_normal((80, 6)).astype(np.float32),
    "fmri": lambda: rng.standard_normal(48).astype(np.float32),
}


@pytest.mark.parametrize("name", sorted(RAW))
def test_preprocess_gives_the_input_shape_and_the_model_accepts_it(tiny_model, name):
    mod = tiny_model.modalities[name]
    x = mod.preprocess(RAW[name]())
    want = tuple(x.shape[i] if s is None else s for i, s in enumerate(mod.input_shape()))
    assert x.dtype == torch.float32 and tuple(x.shape) == want
    assert torch.isfinite(x).all()
    with torch.no_grad():
        out = tiny_model.encode(x.unsqueeze(0), name)
    assert out.shape == (
        1,
        tiny_model.config.projection.num_queries,
        tiny_model.llm.config.hidden_size,
    )


@pytest.mark.parametrize("name", sorted(RAW))
def test_tokenizer_output_fits_its_positional_embedding(tiny_model, name):
    tok = tiny_model.tokenizers[name]
    x = random_input(tiny_model, name)
    with torch.no_grad():
        t = tok(x, tiny_model.encoder)
    assert t.dim() == 4 and t.shape[0] == 2 and t.shape[-1] == tiny_model.encoder.width
    pos = (
        tok.position_embedding
        if tok.position_embedding is not None
        else tiny_model.encoder.position_embedding
    )
    assert pos.shape[0] == t.shape[2] + 1


@pytest.mark.parametrize("name", sorted(RAW))
def test_unusable_raw_input_names_the_modality(tiny_model, name):
    with pytest.raises(InputError, match=f"^{name}: expected"):
        tiny_model.modalities[name].preprocess(object())


@pytest.mark.parametrize("name", ["image", "audio", "imu", "fmri", "point", "video"])
def test_missing_file_is_an_input_error(tiny_model, tmp_path, name):
    with pytest.raises(InputError, match=f"^{name}: expected .*no such file"):
        tiny_model.modalities[name].preprocess(tmp_path / "missing.npy")


def registered():
    """Every modality the registry can find: the shipped entry points and the thermal
    and ecg plug-ins (files outside the package), as a user's YAML would name them."""
    find_modality(str(ROOT / "examples" / "thermal" / "onellm_thermal.py"), "thermal")
    find_modality(str(ROOT / "examples" / "ecg" / "onellm_ecg.py"), "ecg")
    return sorted({MODALITIES.canonical(n) for n in MODALITIES.names()})


@pytest.fixture(scope="module")
def every_modality_model():
    """The tiny model with every registered modality the tiny config does not hold added."""
    torch.manual_seed(0)
    model = OneLLM.from_config(ROOT / "configs" / "tiny.yaml").eval()
    for name in registered():
        if name not in model.names:
            model.add_modality(name, {"type": name}, new_experts=0)
    return model


@pytest.mark.parametrize("name", registered())
def test_every_registered_modality_reads_its_own_scenes(every_modality_model, name):
    model = every_modality_model
    mod = model.modalities[model.modality_key(name)]
    assert hasattr(mod, "render"), f"{name}: the contract needs a synthetic renderer"
    scene = mod.render(np.random.default_rng(3))
    x = mod.preprocess(scene.input)
    want = tuple(x.shape[i] if s is None else s for i, s in enumerate(mod.input_shape()))
    assert x.dtype == torch.float32 and tuple(x.shape) == want and torch.isfinite(x).all()
    assert scene.caption and all(q and a for q, a in scene.qa)
    with torch.no_grad():
        out = model.encode(x.unsqueeze(0), name)
    assert out.shape == (1, model.config.projection.num_queries, model.llm.config.hidden_size)
    with pytest.raises(InputError, match=f"^{mod.name}: expected"):
        mod.preprocess(object())


@pytest.mark.parametrize("name", registered())
def test_every_registered_modality_reads_the_file_it_writes_as_its_raw_input(
    every_modality_model, tmp_path, name
):
    """The contract's `write(raw, stem)`: the scene as the file its users have (png, mp4,
    flac, ply, csv, nii.gz + mask, ...), which preprocess reads back as it reads the raw
    input, within 8-bit quantisation of a CLIP-normalised pixel (1 / 255 / 0.26 / 2)."""
    mod = every_modality_model.modalities[every_modality_model.modality_key(name)]
    assert hasattr(mod, "write"), f"{name}: the contract needs a file writer"
    scene = mod.render(np.random.default_rng(5))
    files = mod.write(scene.input, tmp_path / "scene")
    paths = files.values() if isinstance(files, dict) else [files]
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
    from_file, from_raw = mod.preprocess(files), mod.preprocess(scene.input)
    assert from_file.shape == from_raw.shape
    assert float((from_file - from_raw).abs().max()) < 0.0076


@pytest.mark.parametrize("name", registered())
def test_every_registered_modality_lists_the_captions_it_renders(every_modality_model, name):
    """`captions()` is what a tiny text tokenizer learns: it must hold what `render` says."""
    mod = every_modality_model.modalities[every_modality_model.modality_key(name)]
    captions = set(mod.captions())
    for seed in range(20):
        assert mod.render(np.random.default_rng(seed)).caption in captions
