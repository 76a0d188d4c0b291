"""An out-of-tree plug-in package (tests/plugin, installed into the test venv by `make setup`
through its entry points alone) adds a modality, a projection kind and an output kind with
its decoder; a model that names them builds, trains a stage, chats, saves and loads back,
with no edit to onellm."""

import pytest
import torch

from onellm import OneLLM
from onellm.registry import DECODERS, MODALITIES, OUTPUT_KINDS, PROJECTIONS
from onellm.training.recipe import Recipe, read_metrics
from onellm.training.stage import load_stage
from tests.conftest import TINY, ForceAt

pytest.importorskip("echo_plugin", reason="the test plug-in: pip install -e tests/plugin")

OVERRIDES = [
    "modalities.echo={length: 64}",
    "projection.by_modality={echo: {type: linear, num_queries: 3}}",
    "outputs.loc={experts: 1}",
]


def test_its_entry_points_fill_the_registries():
    assert MODALITIES.get("echo").__module__ == "echo_plugin.echo"
    assert PROJECTIONS.get("linear").kind.__module__ == "echo_plugin.linear"
    assert OUTPUT_KINDS.get("loc").field == "locations"
    assert DECODERS.get("coords").__module__ == "echo_plugin.loc"
    for registry, name in ((MODALITIES, "echo"), (PROJECTIONS, "linear"), (OUTPUT_KINDS, "loc")):
        assert name in registry.names()


def test_a_model_naming_them_trains_chats_and_loads_back(tmp_path):
    torch.manual_seed(0)
    cfg = load_stage(
        "stage1_image",
        [
            f"init_from={TINY}",
            f"model_overrides={OVERRIDES}",
            f"output_dir={tmp_path / 'run'}",
            "data={echo: {task: caption, pool: 16}}",
            "trainable=[projections.*, tokenizers.echo.*]",
            "steps=3",
            "batch_size=4",
            "log_every=1",
            "eval.samples=2",
            "eval.modalities=[echo]",
        ],
    )
    t = Recipe(cfg, quiet=True).setup()
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("projections.linear.", "tokenizers.echo.")) for n in trainable
    )
    before = t.model.projections["linear"].proj.weight.detach().clone()
    t.train()
    final = t.save()
    losses = [r["loss"] for r in read_metrics(cfg.output_dir) if r["event"] == "train"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, t.model.projections["linear"].proj.weight)

    model = OneLLM.from_pretrained(final).eval()
    assert type(model.projector("echo")).__name__ == "LinearProjection"
    assert model.layout.run_lengths["echo"] == 3 + 2
    trace = torch.randn(6, 64)
    reply = model.chat(trace, modality="echo", prompt="What is it?", max_new_tokens=4)
    assert isinstance(reply.text, str) and reply.locations == []
    loc = model.outputs.token_ids["loc"]
    forced = model.chat(
        trace,
        modality="echo",
        prompt="Where?",
        max_new_tokens=3,
        logits_processor=[ForceAt(loc, 0)],
    )
    assert forced.token_ids[0] == loc and len(forced.locations) == 1
    x, y = forced.locations[0].tolist()
    assert 0 < x < 1 and 0 < y < 1
    (path,) = forced.save(tmp_path / "out", "r")
    assert path.name == "r-location-0.png"
