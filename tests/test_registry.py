from importlib.metadata import EntryPoint

import pytest

from onellm.errors import RegistryError
from onellm.registry import MODALITIES, Registry


def test_register_lookup_and_aliases():
    r = Registry("thing")
    r.register("alpha", 1, aliases=("a",))
    assert r.get("alpha") == 1 and r.get("a") == 1
    assert r.canonical("a") == "alpha"
    assert r.aliases("alpha") == ["a"] and r.aliases("a") == ["a"]
    assert "a" in r and list(r) == ["alpha"]


def test_duplicates_and_bad_names_are_refused():
    r = Registry("thing")
    r.register("alpha", 1)
    with pytest.raises(RegistryError, match="already registered"):
        r.register("alpha", 2)
    with pytest.raises(RegistryError, match="invalid name"):
        r.register("Bad Name", 3)
    assert r.get("alpha") == 1  # the refused registration changed nothing


def test_failed_lookup_lists_what_is_registered():
    r = Registry("router")
    r.register("soft", 1)
    r.register("topk", 2)
    with pytest.raises(RegistryError, match="unknown router 'dense'; registered: soft, topk"):
        r.get("dense")


def test_shipped_modalities_are_registered():
    expected = {"image", "video", "audio", "point", "depth", "normal", "imu", "fmri"}
    assert expected <= set(MODALITIES.names())
    assert MODALITIES.canonical("rgbd") == "depth" and MODALITIES.canonical("rgbn") == "normal"


def test_entry_points_load_by_name_and_bad_ones_are_clear_errors(monkeypatch, tmp_path):
    (tmp_path / "good_plugin.py").write_text("THING = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    declared = [
        EntryPoint("good", "good_plugin:THING", "test.things"),
        EntryPoint("broken", "no_such_module_here", "test.things"),
    ]
    monkeypatch.setattr("onellm.registry.entry_points", lambda group: declared)
    r = Registry("thing", group="test.things")
    import good_plugin

    assert r.get("good") is good_plugin.THING  # an object is registered under its name
    with pytest.raises(RegistryError, match=r"unknown thing 'x'; registered: broken, good"):
        r.get("x")  # listed without importing them
    with pytest.raises(RegistryError, match=r"'broken': its entry point no_such_module_here"):
        r.get("broken")
    declared.append(EntryPoint("good", "elsewhere:THING", "test.things"))
    with pytest.raises(
        RegistryError, match=r"'good' is declared twice .* good_plugin:THING and elsewhere:THING"
    ):
        Registry("thing", group="test.things").get("good")
