import pytest

from onellm.config import ModelConfig, load_config
from onellm.errors import ConfigError
from tests.conftest import ROOT, TINY

CONFIGS = sorted((ROOT / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_in_configs_loads_and_validates(path, monkeypatch):
    monkeypatch.setenv("ONELLM_CLIP_DIR", "/models/clip")
    monkeypatch.setenv("ONELLM_LLAMA_DIR", "/models/llama")
    if "stages" in path.parts:
        from onellm.training.stage import StageConfig, load_stage

        stage = load_stage(path)
        assert isinstance(stage, StageConfig)
        first = path.read_text().splitlines()[0]
        assert first == f"# onellm train {path.stem}", "a stage YAML starts with its run command"
        return
    cfg = load_config(path)
    assert isinstance(cfg, ModelConfig)
    assert cfg.modalities, "a model config names its modalities"
    from onellm.modeling.build import build_modality

    for name, spec in cfg.modalities.items():  # every modality spec builds
        assert build_modality(name, spec) is not None


def test_real_config_reads_paths_from_variables(monkeypatch):
    monkeypatch.setenv("ONELLM_CLIP_DIR", "/m/clip")
    monkeypatch.setenv("ONELLM_LLAMA_DIR", "/m/llama")
    cfg = load_config(ROOT / "configs" / "onellm-7b.yaml", ["vars.llama_dir=/other/llama"])
    assert cfg.encoder.path == "/m/clip"
    assert cfg.llm.path == "/other/llama"
    assert (cfg.projection.num_experts, cfg.projection.layers_per_expert) == (3, 8)
    assert cfg.projection.num_queries == 30


def test_unset_variable_is_named(monkeypatch):
    monkeypatch.delenv("ONELLM_CLIP_DIR", raising=False)
    with pytest.raises(ConfigError, match="ONELLM_CLIP_DIR"):
        load_config(ROOT / "configs" / "onellm-7b.yaml")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'encoder\.hiden_size'"):
        load_config(TINY, ["encoder.hiden_size=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'colour'"):
        load_config({"colour": 1})


def test_override_reaches_nested_keys_and_keeps_types():
    cfg = load_config(TINY, ["projection.num_experts=5", "projection.router={type: topk, k: 2}"])
    assert cfg.projection.num_experts == 5
    assert cfg.projection.router == {"type": "topk", "k": 2}
    assert cfg.llm.rms_norm_eps == pytest.approx(1e-5)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"projection\.num_queries: expected int"):
        load_config(TINY, ["projection.num_queries=many"])


def test_interpolation_and_defaults(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    cfg = load_config(
        {
            "vars": {"w": 32, "p": "${env:NOPE,/x}"},
            "encoder": {"hidden_size": "${vars.w}", "path": "${vars.p}/clip"},
        }
    )
    assert cfg.encoder.hidden_size == 32
    assert cfg.encoder.path == "/x/clip"
    with pytest.raises(ConfigError, match="circular"):
        load_config({"vars": {"a": "${vars.b}", "b": "${vars.a}"}})


def test_unknown_modality_argument_is_named():
    from onellm.modeling.build import build_modality

    with pytest.raises(ConfigError, match=r"modalities\.audio\.mel"):
        build_modality("audio", {"mel": 3})


def test_a_stages_replay_and_held_out_manifests_read_from_yaml(tmp_path):
    from onellm.training.stage import ReplayConfig, load_stage

    (tmp_path / "test.jsonl").write_text("")
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        "name: ft\ninit_from: runs/demo/stage4/final\noutput_dir: runs/ft\n"
        "data: {image: {task: caption}}\ntrainable: [projection.*]\n"
        "eval: {data: {image: test.jsonl}}\nreplay: {ratio: 0.3}\n"
    )
    cfg = load_stage(recipe)
    assert cfg.eval.data == {"image": str(tmp_path / "test.jsonl")}  # beside the YAML
    assert cfg.replay == ReplayConfig(ratio=0.3)
    assert load_stage(recipe, ["replay=false"]).replay is False
    assert load_stage(recipe, ["replay=null"]).replay is None  # the default: on if needed
    with pytest.raises(ConfigError, match=r"eval.floor / eval.forgetting"):
        load_stage(recipe, ["eval.floor=50"])
