"""One table-driven contract suite over every name in every registry (the shipped plug-ins
and any installed package's, tests/plugin's among them): each is found through its
entry-point group and answers its kind's protocol. Each kind's own behaviour has its own
tests (tests/modalities/test_contract.py runs every modality through preprocess, write and
the model; tests/experts/test_projection_kinds.py every projection kind)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from onellm import OneLLM
from onellm.errors import RegistryError
from onellm.modeling.llm_experts import LLMExperts
from onellm.modeling.modality import Modality
from onellm.modeling.outputs import OutputExpert
from onellm.registry import (
    AUXILIARY,
    DECODERS,
    EXTENSION_POINTS,
    LLM_EXPERTS,
    MIXERS,
    MODALITIES,
    OUTPUT_KINDS,
    PROJECTIONS,
    ROUTERS,
    TASKS,
)
from onellm.training.task import Task
from tests.conftest import TINY

EVERY = [(group, name) for group, reg in EXTENSION_POINTS.items() for name in reg.names()]


def check_modality(name, cls):
    mod = cls()
    assert isinstance(mod, Modality) and mod.name == name
    assert all(s is None or (isinstance(s, int) and s > 0) for s in mod.input_shape())


def check_router(name, cls):
    router = ROUTERS.build(name, width=16, hidden=32, num_experts=4)
    w = router(torch.randn(2, 5, 16))
    assert w.shape == (2, 5, 4) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))  # weights over the experts


def check_projection(name, build):
    model = OneLLM.from_config(TINY, [f"projection.type={name}"]).eval()
    x = torch.randn(2, *model.modalities["image"].input_shape())
    block = model.modality_block(x, "image")
    n = model.projector("image").num_tokens("image")
    assert block.shape == (2, n + 2, model.llm.config.hidden_size)
    assert model.layout.run_lengths["image"] == n + 2


def check_output_kind(name, cls):
    assert issubclass(cls, OutputExpert)
    assert cls.decoder_type in DECODERS and issubclass(cls.head_class, nn.Module)
    assert isinstance(cls.field, str) and isinstance(cls.item, str)
    assert name not in MODALITIES.names(aliases=True)  # its <name> token is its own
    fields = [c.field for _, c in OUTPUT_KINDS.items()]
    assert fields.count(cls.field) == 1  # one reply field per kind


def check_task(name, task):
    assert isinstance(task, Task) and task.name == name


def check_decoder(name, factory):
    assert callable(factory) and "tokenizer" in inspect.signature(factory).parameters


def check_auxiliary(name, source):
    assert callable(source)


def check_mixer(name, cls):
    assert issubclass(cls, nn.Module) and "llm_width" in inspect.signature(cls).parameters


def check_llm_experts(name, cls):
    # built by onellm/modeling/build.py with what the model gives, then attached
    given = inspect.signature(cls).parameters
    assert issubclass(cls, nn.Module) and {"names", "llm_width", "llm_layers"} <= set(given)
    model = OneLLM.from_config(TINY, [f"llm_experts={{kind: {name}}}"]).eval()
    assert isinstance(model.llm_experts, LLMExperts)
    x = torch.randn(2, *model.modalities["image"].input_shape())
    ids, _ = model.layout.widen(torch.randint(3, 400, (2, 5)), ["image"])
    with torch.no_grad():
        logits = model(ids, inputs={"image": x}).logits
    assert logits.shape == (*ids.shape, model.llm.config.vocab_size)
    assert torch.isfinite(logits).all()


CONTRACTS = {
    MODALITIES.group: check_modality,
    ROUTERS.group: check_router,
    PROJECTIONS.group: check_projection,
    OUTPUT_KINDS.group: check_output_kind,
    TASKS.group: check_task,
    DECODERS.group: check_decoder,
    AUXILIARY.group: check_auxiliary,
    MIXERS.group: check_mixer,
    LLM_EXPERTS.group: check_llm_experts,
}


def test_every_extension_point_has_a_contract_and_plugins():
    assert set(CONTRACTS) == set(EXTENSION_POINTS)
    for group, registry in EXTENSION_POINTS.items():
        assert registry.names(), f"{group}: nothing registered"


@pytest.mark.parametrize(("group", "name"), EVERY, ids=[f"{g}:{n}" for g, n in EVERY])
def test_every_plugin_meets_its_kind_contract(group, name):
    CONTRACTS[group](name, EXTENSION_POINTS[group].get(name))


@pytest.mark.parametrize("group", sorted(EXTENSION_POINTS))
def test_an_unknown_name_is_refused_listing_the_registered(group):
    registry = EXTENSION_POINTS[group]
    with pytest.raises(RegistryError, match=f"unknown {registry.kind} 'nope'; registered: "):
        registry.get("nope")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(registry.names()[0], object())
