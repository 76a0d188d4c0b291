"""MoAI's auxiliary sources, compressor and mixer (experts/moai/auxiliary.py, experts/moai/mixer.py)."""

import numpy as np
import pytest
import torch

from onellm import OneLLM
from onellm.data import scene_qa
from onellm.errors import ConfigError, InputError, RegistryError
from onellm.experts.moai.auxiliary import ColourRegions, build_source, describe
from onellm.inference.chat import Conversation, generate
from onellm.modeling.template import render_prompt
from onellm.registry import AUXILIARY
from tests.conftest import TINY

MOAI = "moai={layers: [1, 3], sources: [components, sam], queries: 6, rank: 32, heads: 4}"
# the same mixer reading one token per region (experts/moai/compressor.py)
BOTH = [MOAI, MOAI.replace("queries: 6", "compressor: regions")]


@pytest.fixture(scope="module")
def pair():
    """The tiny model without and with an untrained mixer, the same weights otherwise."""
    torch.manual_seed(0)
    plain = OneLLM.from_config(TINY).eval()
    torch.manual_seed(0)
    return plain, OneLLM.from_config(TINY, [MOAI]).eval()


@pytest.fixture(scope="module")
def scene():
    return scene_qa.scene(3, "test", size=64)


def prompt(model, question="What is left of the red circle?"):
    ids, _ = model.layout.row([(question, False)], ["image"])
    return torch.tensor([ids, ids])


def perturbed(model, scale: float = 0.2):
    with torch.no_grad():
        for p in model.moai.parameters():
            p.add_(torch.randn_like(p) * scale)


def test_sources_are_registered_and_refused_by_name():
    assert {"sam", "components"} <= set(AUXILIARY.names())
    with pytest.raises(
        RegistryError, match="unknown auxiliary source 'ocr'; registered: components, sam"
    ):
        build_source("ocr")
    with pytest.raises(ConfigError, match="cannot import"):
        build_source("nowhere.at_all:describe")
    fn = build_source("onellm.experts.moai.auxiliary:describe")  # a user's function by import path
    assert fn is describe


def test_the_colour_detector_finds_each_shape_where_it_is(scene):
    pixels = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
    said = ColourRegions()(pixels)
    regions = said.split("; ")
    assert len(regions) == len(scene.shapes)
    for colour, _, cell in scene.shapes:  # its colour, at its quadrant's side of the image
        row, col = divmod(cell, 2)
        match = [r for r in regions if r.startswith(colour)]
        x, y = (int(v) for v in match[0].split("(")[1].split(")")[0].split(", "))
        assert ("left" in match[0]) != bool(col) and ("top" in match[0]) != bool(row)
        assert (x > 50) == bool(col) and (y > 50) == bool(row), (said, scene.shapes)


def test_an_untrained_mixer_leaves_the_llm_bit_identical(pair, scene):
    plain, mixed = pair
    x = plain.preprocess(scene.image, "image").expand(2, -1, -1, -1)
    aux = mixed.moai.describe(mixed, [plain.modalities["image"].pixels(scene.image)] * 2)
    assert aux[0]  # the components source says something
    a = plain(prompt(plain), inputs={"image": x}).logits
    b = mixed(prompt(mixed), inputs={"image": x}, aux=aux).logits
    assert torch.equal(a, b)
    q = "How many circles?"
    assert (
        plain.chat(scene.image, "image", q).token_ids
        == mixed.chat(scene.image, "image", q).token_ids
    )


def test_the_compressor_gives_its_queries_for_any_text_length(pair):
    _, mixed = pair
    out, valid = mixed.moai.compress(mixed, ["", "a red ellipse at (25, 25), area 6; " * 8])
    assert (
        valid.shape == (2, 6)
        and valid.all()
        and out.shape == (2, 6, mixed.llm.config.hidden_size)
        and torch.isfinite(out).all()
    )


def test_the_mixer_trains_with_the_llm_frozen(scene):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [MOAI]).train()
    model.requires_grad_(False)
    model.moai.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = model.preprocess(scene.image, "image").expand(2, -1, -1, -1)
    ids = prompt(model)
    for _ in range(2):  # the first step moves the zero output projections, the second the rest
        loss = model(ids, inputs={"image": x}, labels=ids, aux=["red ellipse at (20, 30)"] * 2).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("moai.") for n in moved)
    assert any(".out." in n for n in moved) and any(".q." in n for n in moved)
    assert any(n.startswith("moai.compressor.") for n in moved)


@pytest.mark.parametrize("spec", BOTH)
def test_mixed_generation_with_and_without_the_cache_agrees(spec, scene, tmp_path):
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [spec]).eval()
    perturbed(model)
    q = "Where is the red circle?"
    cached = model.chat(scene.image, "image", q, max_new_tokens=8)
    assert (
        cached.token_ids
        == model.chat(scene.image, "image", q, max_new_tokens=8, use_cache=False).token_ids
    )
    model.save_pretrained(tmp_path / "moai")
    back = OneLLM.from_pretrained(tmp_path / "moai").eval()
    assert back.chat(scene.image, "image", q, max_new_tokens=8).token_ids == cached.token_ids


def test_the_mixer_can_change_what_the_model_says(pair, scene):
    _, mixed = pair
    x = mixed.preprocess(scene.image, "image").expand(2, -1, -1, -1)
    before = mixed(prompt(mixed), inputs={"image": x}, aux=["a", "b"]).logits
    torch.manual_seed(1)
    model = OneLLM.from_config(TINY, [MOAI]).eval()
    model.load_state_dict(mixed.state_dict())
    perturbed(model)
    after = model(prompt(model), inputs={"image": x}, aux=["a", "b"]).logits
    assert not torch.allclose(before, after)


def test_bad_moai_settings_and_aux_are_refused(pair):
    plain, mixed = pair
    text = torch.tensor([[1, 40, 41], [1, 42, 43]])  # no modality input
    with pytest.raises(InputError, match="aux: this model has no MoAI mixer"):
        plain(text, aux=["x", "y"])
    with pytest.raises(InputError, match="one auxiliary text per row"):
        mixed(text, aux=["x"])
    with pytest.raises(InputError, match=r"moai.layers: expected layers in 0..3, got 9"):
        OneLLM.from_config(TINY, ["moai={layers: [9], sources: [components]}"])
    with pytest.raises(ConfigError, match="unknown key 'moai.depth'"):
        OneLLM.from_config(TINY, ["moai={layers: [1], depth: 2}"])


def test_the_sam_source_reads_the_models_own_sam(pair, scene):
    _, mixed = pair
    pixels = mixed.modalities["image"].pixels(scene.image)
    said = AUXILIARY.get("sam")(grid=3, min_area=0.0, max_area=1.0)(pixels, mixed)
    assert isinstance(said, str)  # an untrained SAM may see anything; the words are the format
    for part in filter(None, said.split("; ")):
        assert " at (" in part and ", area " in part
    with pytest.raises(ConfigError, match="no output with a SAM decoder"):
        AUXILIARY.get("sam")()(pixels, type("NoSam", (), {"outputs": {}})())


def test_describe_names_colour_shape_centre_and_area():
    img = torch.full((3, 20, 20), 0.5)
    mask = np.zeros((20, 20), bool)
    mask[2:8, 10:16] = True  # a 6 x 6 square, top right
    img[:, 2:8, 10:16] = torch.tensor([220, 40, 40]).view(3, 1, 1) / 255
    assert describe(img, [mask]) == "red rectangle, top centre (65, 25), area 9"


@pytest.mark.parametrize("spec", BOTH)
def test_a_cached_step_equals_the_whole_sequence(spec, scene):
    """The prefill keeps each layer's visual states; a cached step reads them and gives the
    logits the whole sequence gives at that position."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [spec]).eval()
    perturbed(model)
    x = model.preprocess(scene.image, "image")
    ids = prompt(model)[:1]
    aux = model.moai.describe(model, [model.modalities["image"].pixels(scene.image)])
    embeds = model.embed(ids, {"image": model.modality_block(x, "image")})
    with torch.no_grad():
        with model.mixing(ids, aux):
            whole = model.llm(inputs_embeds=embeds).logits
        with model.mixing(ids[:, :-2], aux):  # generate's: the prompt, then a step at a time
            first = model.llm(inputs_embeds=embeds[:, :-2], use_cache=True)
            step = model.llm(
                inputs_embeds=embeds[:, -2:-1],
                use_cache=True,
                past_key_values=first.past_key_values,
            )
            again = model.llm(inputs_embeds=embeds[:, :-1]).logits  # no cache: all again
    torch.testing.assert_close(step.logits[:, -1], whole[:, -2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again[:, -1], whole[:, -2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", BOTH)
def test_left_padded_rows_each_equal_their_chat_alone(spec, scene):
    """A batch of prompts of different lengths (left-padded in one generate) with a trained
    mixer: padding is nobody's context, so each row says what it says alone."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [spec]).eval()
    perturbed(model, 1.0)  # a mixer strong enough that reading padding would change words
    other = scene_qa.scene(4, "test", size=64)
    assert len(other.shapes) != len(scene.shapes)  # rows of different region counts
    asks = [(scene, "How many circles?"), (other, "What is left of the blue square in it?")]
    pixels = model.modalities["image"].pixels
    rows = [
        Conversation(
            {"image": model.preprocess(sc.image, "image")},
            render_prompt(model.config.chat, q, []),
            pixels(sc.image),
        )
        for sc, q in asks
    ]
    together = generate(model, rows, max_new_tokens=12)
    alone = [model.chat(sc.image, "image", q, max_new_tokens=12) for sc, q in asks]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


def test_describe_without_coordinates_says_colour_shape_and_place():
    img = torch.full((3, 20, 20), 0.5)
    mask = np.zeros((20, 20), bool)
    mask[12:18, 2:8] = True  # bottom left
    img[:, 12:18, 2:8] = torch.tensor([50, 80, 230]).view(3, 1, 1) / 255
    assert describe(img, [mask], coordinates=False) == "blue rectangle, bottom left"
    said = ColourRegions(coordinates=False)(img)
    assert said == "blue rectangle, bottom left"


def test_gates_start_uniform_and_the_compressor_can_read_the_llms_states(pair):
    _, mixed = pair
    h = torch.randn(2, 5, 128)
    mixer = mixed.moai.mixers["1"]
    torch.testing.assert_close(mixer.gate_language(h).softmax(-1), torch.full((2, 5, 3), 1 / 3))
    torch.testing.assert_close(mixer.gate_visual(h).softmax(-1), torch.full((2, 5, 2), 1 / 2))
    texts = ["red ellipse, top left; blue triangle, bottom right", "green rectangle, top right"]
    bare = mixed.moai.compress(mixed, texts)[0]
    mixed.moai.aux_states = 1
    try:
        read = mixed.moai.compress(mixed, texts)[0]
        swapped = mixed.moai.compress(
            mixed, ["blue triangle, bottom right; red ellipse, top left"]
        )[0]
    finally:
        mixed.moai.aux_states = None
    assert read.shape == bare.shape and not torch.allclose(read, bare)
    # the LLM's states carry order: the same words in another order compress otherwise
    assert not torch.allclose(read[:1], swapped, atol=1e-4)
