"""What installs: one package (`onellm`, with the repository's modalities/, experts/ and
configs/ inside it), every shipped plug-in declared as an entry point, the shipped configs
reachable by name from any directory, and paths in a YAML read beside the YAML.
(.ci/install_check.sh checks the built wheel itself in a fresh venv.)"""

from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib

from onellm import OneLLM
from onellm.config import find_config, is_config, load_config, packaged_configs
from onellm.errors import ConfigError
from onellm.registry import EXTENSION_POINTS
from onellm.training.stage import load_stage
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def folder_of(package: str) -> Path:
    """The repository folder a package installs from (package-dir)."""
    dirs = SETUPTOOLS["package-dir"]
    head = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(head) + 1 :].split(".") if package != head else []
    return ROOT / dirs[head] / Path(*rest)


def test_every_folder_that_holds_code_or_configs_is_a_listed_package():
    listed = set(SETUPTOOLS["packages"])
    assert all(p == "onellm" or p.startswith("onellm.") for p in listed)  # one top-level name
    for package in listed:
        assert folder_of(package).is_dir(), package
    found = set()
    for package, top in SETUPTOOLS["package-dir"].items():
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                rel = path.parent.relative_to(ROOT / top).parts
                if top != "onellm" or rel[:1] not in (("experts",), ("modalities",)):
                    found.add(".".join([package, *rel]))
    assert found == listed


def test_every_shipped_plugin_is_an_entry_point_that_registers_its_name():
    # a group for every extension point, and lmms-eval's (its models: test_lmms_eval.py)
    declared = PYPROJECT["project"]["entry-points"]
    assert set(declared) == {*EXTENSION_POINTS, "lmms_eval.models"}
    declared = {g: v for g, v in declared.items() if g in EXTENSION_POINTS}
    for group, registry in EXTENSION_POINTS.items():
        installed = {ep.name: ep.value for ep in entry_points(group=group)}
        for name, target in declared[group].items():
            assert installed.get(name) == target, f"{group}: {name} is not installed as declared"
            assert name in registry and registry.canonical(name) in registry.names(), (group, name)


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = packaged_configs()
    assert {"tiny", "onellm-7b", "stage0_pretrain", "stage1_image", "stage5_decoders"} <= set(
        shipped
    )
    assert find_config("tiny") == shipped["tiny"] and shipped["tiny"].name == "tiny.yaml"
    assert is_config("tiny") and is_config("x.yaml") and not is_config("runs/demo/stage1")
    with pytest.raises(ConfigError, match=r"config 'tinny': no such file.*shipped: .*tiny"):
        load_config("tinny")
    assert load_config("tiny") == load_config(ROOT / "configs" / "tiny.yaml")
    model = OneLLM.from_config("tiny")
    assert "image" in model.modalities
    # the demo's recipes: stage 0 starts from the shipped model config; outputs under ./runs
    stage0 = load_stage("stage0_pretrain")
    assert stage0.init_from == "tiny" and stage0.output_dir == "runs/demo/stage0"
    assert load_stage("stage1_image").init_from == "runs/demo/stage0/final"


def test_a_path_in_a_yaml_is_read_beside_the_yaml(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "model.yaml").write_text((ROOT / "configs" / "tiny.yaml").read_text())
    (recipes / "train.jsonl").write_text("")
    (recipes / "plugin.py").write_text("")
    (recipes / "stage.yaml").write_text(
        "name: mine\ninit_from: model.yaml\noutput_dir: runs/mine\ntrainable: [projection.*]\n"
        "data: {image: {task: caption, data: ./train.jsonl}}\n"
        "add_modality: {name: x, type: plugin.py:Plugin}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_stage(recipes / "stage.yaml")
    assert cfg.init_from == str(recipes / "model.yaml")  # beside the YAML, not ./model.yaml
    assert cfg.data["image"].data == str(recipes / "train.jsonl")
    assert cfg.output_dir == "runs/mine"  # an output: stays under the working dir
    assert cfg.add_modality.type == f"{recipes / 'plugin.py'}:Plugin"
    # only keys that name files: "." as a stop string stays a stop string
    model = load_config(recipes / "model.yaml", ["chat.stop=[., '###']"])
    assert model.chat.stop == [".", "###"]
    (recipes / "model.yaml").write_text("chat: {stop: [.], system: " + "a." * 200 + "}\n")
    assert load_config(recipes / "model.yaml").chat.stop == ["."]
    # a path given on the command line is the user's, relative to where they are
    cfg = load_stage(recipes / "stage.yaml", ["init_from=model.yaml"])
    assert cfg.init_from == "model.yaml"
