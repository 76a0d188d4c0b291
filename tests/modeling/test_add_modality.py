"""Adding a modality (and experts) to a model without changing what it does for the others."""

import importlib.metadata
import importlib.util
import inspect
import shutil
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.checkpoints.plugin_files import keep_plugins
from onellm.errors import CheckpointError, ConfigError, InputError, RegistryError
from onellm.modeling.modality import MODALITIES, find_modality
from onellm.registry import Registry
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import ROOT, TINY, random_input

PLUGIN = ROOT / "examples" / "thermal" / "onellm_thermal.py"
ADD_STAGE = ROOT / "configs" / "stages" / "add_modality.yaml"


def old_logits(model, inputs, ids):
    with torch.no_grad():
        return {m: onellm_logits(model, ids, x, m) for m, x in inputs.items()}


@pytest.fixture()
def fresh():
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY).eval()
    inputs = {m: random_input(model, m) for m in model.modalities}
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    return model, inputs, ids


@pytest.mark.parametrize("new_experts", [0, 2])
def test_old_modalities_are_bit_identical_after_add_modality(fresh, new_experts):
    model, inputs, ids = fresh
    before = old_logits(model, inputs, ids)
    new = model.add_modality(
        "thermal", {"type": str(PLUGIN)}, new_experts=new_experts, init_from="image"
    )
    after = old_logits(model, inputs, ids)
    for m in before:
        assert torch.equal(before[m], after[m]), m
    assert model.projection.num_experts == 3 + new_experts
    assert model.projection.routes["image"] == [0, 1, 2]
    assert model.projection.routes["thermal"] == list(range(3 + new_experts))
    # only the new parts train by default
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(new)
    assert all(n.startswith(("tokenizers.thermal.", "projection.")) for n in new)
    assert all("thermal" in n or n.startswith("projection.experts.") for n in new)
    x = torch.randn(2, 1, 32, 32)
    assert onellm_logits(model, ids, x, "thermal").shape == before["image"].shape
    # copied from image: queries, projections, tags
    proj = model.projection
    assert torch.equal(proj.queries["thermal"], proj.queries["image"])
    assert torch.equal(proj.in_proj["thermal"][0].weight, proj.in_proj["image"][0].weight)


def test_routing_report_gives_new_experts_zero_weight_for_old_modalities(fresh):
    model, inputs, _ = fresh
    model.add_modality("thermal", {"type": str(PLUGIN)}, new_experts=1)
    old = model.routing_report("image", inputs["image"])
    assert old["per_expert"][3] == 0.0 and sum(old["per_expert"]) == pytest.approx(1.0)
    assert len(old["per_query"]) == model.projection.num_queries
    scene = MODALITIES.get("thermal")().render(__import__("numpy").random.default_rng(0))
    new = model.routing_report("thermal", [scene.input, scene.input])
    assert new["per_expert"][3] > 0 and sum(new["per_expert"]) == pytest.approx(1.0)


def test_a_model_with_an_added_modality_saves_and_loads(fresh, tmp_path):
    model, inputs, ids = fresh
    model.add_modality("thermal", {"type": str(PLUGIN)}, new_experts=1, init_from="image")
    x = torch.randn(2, 1, 32, 32)
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.projection.routes == model.projection.routes
    with torch.no_grad():
        assert torch.equal(
            onellm_logits(back, ids, x, "thermal"), onellm_logits(model, ids, x, "thermal")
        )
        assert torch.equal(
            onellm_logits(back, ids, inputs["image"], "image"),
            onellm_logits(model, ids, inputs["image"], "image"),
        )


def test_a_saved_file_plugin_travels_with_the_run(fresh, tmp_path, monkeypatch):
    """The saved config names a file plug-in inside the run (plugins/), never the training
    machine's path: the run loads the same after it moved and the original file is gone."""
    model, inputs, ids = fresh
    src = tmp_path / "mine" / "onellm_cardio.py"  # a fresh name: no module of it is cached
    src.parent.mkdir()
    text = PLUGIN.read_text().replace('"thermal"', '"cardio"')
    src.write_text(text)
    model.add_modality("cardio", {"type": f"{src}:ThermalModality"}, init_from="image")
    model.save_pretrained(tmp_path / "a" / "run")
    saved = (tmp_path / "a" / "run" / "config.yaml").read_text()
    assert "type: plugins/onellm_cardio.py:ThermalModality" in saved
    assert str(tmp_path) not in saved
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(src.parent)
    # a new process: the plug-in is neither imported nor registered
    monkeypatch.delitem(sys.modules, "onellm_plugin_onellm_cardio")
    monkeypatch.delitem(MODALITIES._entries, "cardio")
    monkeypatch.chdir(tmp_path)
    back = OneLLM.from_pretrained(tmp_path / "b" / "run").eval()
    loaded_from = Path(inspect.getfile(type(back.modalities["cardio"])))
    assert loaded_from == tmp_path / "b" / "run" / "plugins" / "onellm_cardio.py"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for m, given in (("cardio", x), ("image", inputs["image"])):
            assert torch.equal(
                onellm_logits(back, ids, given, m), onellm_logits(model, ids, given, m)
            ), m
    # saved again where it is, the run keeps its copy and names it the same way
    back.save_pretrained(tmp_path / "b" / "run")
    again = (tmp_path / "b" / "run" / "config.yaml").read_text()
    assert "type: plugins/onellm_cardio.py:ThermalModality" in again
    assert (tmp_path / "b" / "run" / "plugins" / "onellm_cardio.py").read_text() == text


def test_clear_errors_for_duplicates_and_special_token_names(fresh):
    model, _, _ = fresh
    with pytest.raises(ConfigError, match="already has it"):
        model.add_modality("image")
    with pytest.raises(ConfigError, match=r"<s> clashes with a special token"):
        model.add_modality("s", {"type": "imu"})
    with pytest.raises(RegistryError, match="'seg' clashes with the special token <seg>"):
        MODALITIES.register("seg", object)
    with pytest.raises(RegistryError, match="'imu' is already registered"):
        MODALITIES.register("imu", object)
    assert "seg" not in MODALITIES
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a", 2)


def test_plugins_are_found_by_file_module_path_and_entry_point(monkeypatch, tmp_path):
    cls = find_modality(str(PLUGIN), "thermal")
    assert cls.__name__ == "ThermalModality" and MODALITIES.get("thermal") is cls
    assert find_modality(f"{PLUGIN}:ThermalModality") is cls
    # a module path, importable from sys.path
    (tmp_path / "my_sonar.py").write_text(
        "from onellm.modalities.imu import IMUModality\n"
        "from onellm.modeling.modality import MODALITIES\n"
        "class Sonar(IMUModality):\n    name = 'sonar'\n"
        "MODALITIES.register('sonar', Sonar)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_modality("my_sonar:Sonar", "sonar").__name__ == "Sonar"
    # an installed plug-in: its entry point is loaded by name
    (tmp_path / "radar_plugin.py").write_text(
        "from onellm.modalities.imu import IMUModality\nclass Radar(IMUModality):\n    name = 'radar'\n"
    )
    eps = [EntryPoint("radar", "radar_plugin:Radar", "onellm.modalities")]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        "onellm.registry.entry_points",
        lambda group: eps if group == "onellm.modalities" else real(group=group),
    )
    assert find_modality("radar").__name__ == "Radar"
    # and from YAML: the model config names the type
    model = OneLLM.from_config(TINY, ["modalities={radar: {length: 64}}"])
    assert type(model.modalities["radar"]).__name__ == "Radar"
    with pytest.raises(ConfigError, match="cannot import"):
        find_modality("no_such_pkg.mod", "x")


def test_shipped_modalities_are_declared_as_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="onellm.modalities")}
    assert names >= {"image", "video", "audio", "point", "depth", "normal", "imu", "fmri"}


def test_a_short_add_modality_stage_trains_only_the_new_parts(tmp_path):
    """`trainable: ["@added"]`: the option that keeps every earlier modality bit-identical
    (the shipped add_modality.yaml trains the LLM's LoRA too, below)."""
    torch.manual_seed(0)
    base = OneLLM.from_config(TINY).eval()
    base.save_pretrained(tmp_path / "base")
    inputs = {m: random_input(base, m) for m in ("image", "audio", "imu")}
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    before = old_logits(base, inputs, ids)
    cfg = load_stage(
        ADD_STAGE,
        [
            f"init_from={tmp_path / 'base'}",
            f"output_dir={tmp_path / 'run'}",
            "steps=30",
            "batch_size=8",
            "log_every=1",
            "eval.samples=4",
            "eval.modalities=[thermal]",
            "schedule.warmup_steps=2",
            "data.thermal.pool=64",
            "add_modality.type=" + str(PLUGIN),
            'trainable=["@added"]',
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    assert t.n_trainable == sum(p.numel() for p in t.model.parameters() if p.requires_grad)
    t.train()
    final = t.save()
    losses = [
        r["loss"]
        for r in read_metrics(cfg.output_dir)
        if r["event"] == "train" and r["source"] == "thermal"
    ]
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:3]) / 3
    # the stage start's vocabulary check, one record per captioned modality
    (checked,) = [r for r in read_metrics(cfg.output_dir) if r["event"] == "vocabulary"]
    assert checked["modality"] == "thermal" and checked["reason"] is None
    assert checked["words"] == 6 and not checked["llm_trains"]  # a, near, far, 3 shapes
    trained = OneLLM.from_pretrained(final).eval()
    after = old_logits(trained, inputs, ids)
    for m in before:
        assert torch.equal(before[m], after[m]), m
    assert "thermal" in trained.modalities and trained.projection.num_experts == 4


def test_the_shipped_add_modality_stage_trains_the_new_parts_and_the_llms_lora(tmp_path):
    """So that the LLM can learn words it never said; a starting model without LoRA gets one."""
    OneLLM.from_config(TINY).save_pretrained(tmp_path / "base")
    cfg = load_stage(
        ADD_STAGE,
        [f"init_from={tmp_path / 'base'}", f"output_dir={tmp_path / 'run'}", "steps=1"],
    )
    t = Recipe(cfg, quiet=True).setup()
    trains = {n for n, p in t.model.named_parameters() if p.requires_grad}
    llm = {n for n in trains if n.startswith("llm.")}
    assert llm and all("lora_" in n for n in llm)
    assert any(n.startswith("tokenizers.thermal.") for n in trains)
    assert not any(n.startswith("tokenizers.image.") for n in trains)


def test_a_modality_starts_from_another_under_any_projection_kind():
    """init_from copies the source's entries of the projection's per-modality tables, for a
    kind without routers too; experts and routing are a routed kind's alone."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, ["projection.type=perceiver"])
    model.add_modality("thermal", {"type": str(PLUGIN)}, init_from="image")
    proj = model.projection
    for table in (proj.latents, proj.start_tag, proj.end_tag):
        assert torch.equal(table["thermal"], table["image"])
    assert torch.equal(proj.out_proj["thermal"][0].weight, proj.out_proj["image"][0].weight)
    with pytest.raises(ConfigError, match="the perceiver projection has none"):
        model.add_modality("sonar", {"type": "depth"}, new_experts=1)
    with pytest.raises(InputError, match="the perceiver projection, which has no router"):
        model.routing_report("image", torch.zeros(1, 3, 32, 32))


def test_two_plugin_files_of_one_name_are_refused_when_saved(tmp_path, monkeypatch):
    """plugins/ holds one file per name: two different files named alike cannot both go."""
    classes = {}
    for key in ("one", "two"):
        path = tmp_path / key / "onellm_same.py"
        path.parent.mkdir()
        path.write_text(f"class Same:\n    name = {key!r}\n")
        spec = importlib.util.spec_from_file_location(f"same_{key}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, f"same_{key}", module)  # as find_modality imports
        spec.loader.exec_module(module)
        classes[key] = module.Same
    specs = {k: {"type": f"{tmp_path / k / 'onellm_same.py'}:Same"} for k in classes}
    with pytest.raises(CheckpointError, match="would both be saved as"):
        keep_plugins(specs, classes, tmp_path / "run")
    kept = keep_plugins({"one": specs["one"], "imu": {"type": "imu"}}, classes, tmp_path / "run")
    assert kept == {"one": {"type": "plugins/onellm_same.py:Same"}, "imu": {"type": "imu"}}
