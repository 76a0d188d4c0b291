"""MoAI's compressors (experts/moai/compressor.py): the perceiver's latents over the words,
or one token per region, each region's words read alone."""

import pytest
import torch

from onellm import OneLLM
from onellm.data import scene_qa
from onellm.errors import InputError
from tests.conftest import TINY

REGIONS = "moai={layers: [1, 3], sources: [components], rank: 32, heads: 4, compressor: regions}"
# regions of different lengths (the second with its coordinates), one said twice, and none
TEXTS = [
    "red circle, top left; blue square, bottom right (75, 70), area 9 | red circle, top left",
    "",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OneLLM.from_config(TINY, [REGIONS]).eval()


def test_regions_give_one_token_per_region_each_read_alone(model):
    tokens, valid = model.moai.compress(model, TEXTS)
    assert tokens.shape == (2, 3, model.llm.config.hidden_size)
    assert valid.tolist() == [[True, True, True], [False, False, False]]
    for i, region in enumerate(
        ["red circle, top left", "blue square, bottom right (75, 70), area 9"]
    ):
        alone, _ = model.moai.compress(model, [region])  # padding is not part of the mean
        torch.testing.assert_close(tokens[0, i], alone[0, 0])
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])
    with torch.no_grad():
        model.moai.aux_positions.normal_()
    try:  # the same region said twice (two sources agreeing): the same but for its position
        placed, _ = model.moai.compress(model, TEXTS)
        positions = model.moai.aux_positions
        torch.testing.assert_close(placed[0, 2] - placed[0, 0], positions[2] - positions[0])
    finally:
        with torch.no_grad():
            model.moai.aux_positions.zero_()
    model.moai.aux_states = 1  # the LLM's states: still each region alone, so order is moot
    try:
        read, _ = model.moai.compress(model, TEXTS[:1])
        swapped, _ = model.moai.compress(
            model, ["blue square, bottom right (75, 70), area 9; red circle, top left"]
        )
    finally:
        model.moai.aux_states = None
    torch.testing.assert_close(read[0, 0], swapped[0, 1])
    assert not torch.allclose(read[0, 0], tokens[0, 0])


def test_regions_have_no_latents_and_train_their_positions():
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [REGIONS]).train()
    names = {n for n, _ in model.named_parameters() if n.startswith("moai.")}
    assert "moai.aux_positions" in names
    assert not any(n.startswith(("moai.latents", "moai.compressor.")) for n in names)
    model.requires_grad_(False)
    model.moai.requires_grad_(True)
    with torch.no_grad():  # past the zero output projections, so the positions get gradient
        for p in model.moai.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    sc = scene_qa.scene(3, "test", size=64)
    ids, _ = model.layout.row([("Where is the red circle?", False)], ["image"])
    ids = torch.tensor([ids, ids])
    x = model.preprocess(sc.image, "image").expand(2, -1, -1, -1)
    model(ids, inputs={"image": x}, labels=ids, aux=TEXTS).loss.backward()
    grad = model.moai.aux_positions.grad
    assert (grad[:3].abs().sum(-1) > 0).all()  # each region said has its position learn


def test_a_text_without_regions_adds_nothing_through_the_aux_experts(model):
    torch.manual_seed(1)
    mixed = OneLLM.from_config(TINY, [REGIONS]).eval()
    mixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in mixed.moai.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    sc = scene_qa.scene(3, "test", size=64)
    ids, _ = mixed.layout.row([("How many circles?", False)], ["image"])
    ids = torch.tensor([ids])
    x = mixed.preprocess(sc.image, "image")
    with torch.no_grad():
        empty = mixed(ids, inputs={"image": x}, aux=[""]).logits
        said = mixed(ids, inputs={"image": x}, aux=[TEXTS[0]]).logits
        for m in mixed.moai.mixers.values():  # what the aux experts add, taken away
            m.language_aux.out.weight.zero_()
            m.visual_aux.out.weight.zero_()
        blind = mixed(ids, inputs={"image": x}, aux=[TEXTS[0]]).logits
    torch.testing.assert_close(empty, blind)
    assert not torch.allclose(said, blind)


def test_an_unknown_compressor_is_refused_with_the_choices():
    with pytest.raises(
        InputError,
        match=r"moai.compressor: expected one of \['perceiver', 'regions'\], got 'qformer'",
    ):
        OneLLM.from_config(TINY, [REGIONS.replace("regions", "qformer")])
