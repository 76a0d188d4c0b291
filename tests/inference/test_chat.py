import numpy as np
import pytest
import torch

from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import InputError
from onellm.inference.chat import ChatResponse
from onellm.modeling.template import render_prompt, render_training
from tests.modalities.test_contract import RAW

MODALITIES = sorted(RAW)
GREEDY = dict(max_new_tokens=8, min_new_tokens=8)  # min_new_tokens passes through to generate


def img(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("modality", MODALITIES)
def test_cached_and_uncached_greedy_tokens_are_identical(tiny_model, modality):
    raw = RAW[modality]()
    cached = tiny_model.chat(raw, modality=modality, prompt="What is this?", **GREEDY)
    uncached = tiny_model.chat(
        raw, modality=modality, prompt="What is this?", use_cache=False, **GREEDY
    )
    assert len(cached.token_ids) >= 1
    assert cached.token_ids == uncached.token_ids
    assert isinstance(cached, ChatResponse) and cached.masks == [] and cached.images == []


def test_batch_of_three_equals_one_by_one(tiny_model):
    images = [img(0), img(1)[:30], img(2)]
    batch = tiny_model.chat(images, modality="image", prompt="What is this?", **GREEDY)
    single = [
        tiny_model.chat(i, modality="image", prompt="What is this?", **GREEDY) for i in images
    ]
    assert isinstance(batch, list) and len(batch) == 3
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]
    # the inputs matter: their next-token distributions differ
    x = torch.cat([tiny_model.preprocess(i, "image") for i in images])
    nxt = onellm_logits(tiny_model, torch.ones(3, 1, dtype=torch.long), x, "image")[:, -1]
    assert not torch.allclose(nxt[0], nxt[1]) and not torch.allclose(nxt[1], nxt[2])


def test_text_only_batch_pads_left_and_matches(tiny_model):
    a = tiny_model.chat(prompt="hello there", **GREEDY)
    b = tiny_model.chat(prompt="hi", **GREEDY)
    assert a.token_ids != [] and b.token_ids != []


def test_streaming_yields_the_same_text(tiny_model):
    for modality in ("image", "audio"):
        raw = RAW[modality]()
        pieces = list(
            tiny_model.chat(
                raw, modality=modality, prompt="Describe it.", stream=True, max_new_tokens=12
            )
        )
        whole = tiny_model.chat(raw, modality=modality, prompt="Describe it.", max_new_tokens=12)
        assert "".join(pieces) == whole.text
        assert len(pieces) >= 1


def capture_embeds(model, monkeypatch):
    seen = {}
    real = model.llm.generate

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(model.llm, "generate", spy)
    return seen


def test_two_modalities_go_where_their_placeholders_stand(tiny_model, monkeypatch):
    m = tiny_model
    seen = capture_embeds(m, monkeypatch)
    image, audio = img(), RAW["audio"]()
    m.chat({"image": image, "audio": audio}, prompt="first <audio> then <image>?", max_new_tokens=2)
    embeds = seen["inputs_embeds"][0]
    blocks = {
        k: m.modality_block(m.preprocess(v, k), k)[0]
        for k, v in (("image", image), ("audio", audio))
    }
    n = m.layout.block_len
    starts = {}
    for k, b in blocks.items():
        hits = [
            i
            for i in range(embeds.shape[0] - n + 1)
            if torch.allclose(embeds[i : i + n], b, atol=1e-6)
        ]
        assert len(hits) == 1, k
        starts[k] = hits[0]
    assert 1 < starts["audio"] < starts["image"]  # in the prompt's order, not at the front
    # the text between them is the prompt's " then "
    between = m.text_tokenizer(" then ", add_special_tokens=False).input_ids
    emb = m.llm.get_input_embeddings().weight
    torch.testing.assert_close(embeds[starts["audio"] + n : starts["image"]], emb[between])


def test_without_placeholders_the_block_goes_first(tiny_model, monkeypatch):
    m = tiny_model
    seen = capture_embeds(m, monkeypatch)
    m.chat(img(), modality="image", prompt="What is this?", max_new_tokens=1)
    embeds = seen["inputs_embeds"][0]
    block = m.modality_block(m.preprocess(img(), "image"), "image")[0]
    torch.testing.assert_close(embeds[1 : 1 + m.layout.block_len], block)  # right after BOS


def test_history_carries_earlier_turns(tiny_model, monkeypatch):
    seen = capture_embeds(tiny_model, monkeypatch)
    tiny_model.chat(
        img(),
        modality="image",
        prompt="And now?",
        history=[("What is this?", "a red circle")],
        max_new_tokens=1,
    )
    with_history = seen["inputs_embeds"].shape[1]
    tiny_model.chat(img(), modality="image", prompt="And now?", max_new_tokens=1)
    segments = render_prompt(
        tiny_model.config.chat, "And now?", [("What is this?", "a red circle")]
    )
    text = "".join(t for t, _ in segments)
    assert (
        text
        == "### Human: What is this?\n### Assistant: a red circle\n### Human: And now?\n### Assistant: "
    )
    assert with_history > seen["inputs_embeds"].shape[1]


def test_training_and_inference_use_the_same_layout(tiny_model):
    chat = tiny_model.config.chat
    turns = [("What is this?", "a red circle"), ("Where?", "on the left")]
    segments = render_training(chat, turns)
    assert segments[:-1] == render_prompt(chat, "Where?", turns[:1])  # one function lays out both
    assert [t for t, target in segments if target] == ["a red circle\n", "on the left\n"]
    assert render_training(chat, None, caption="a red circle") == [("a red circle", True)]
    assert render_prompt(chat, None) == []  # captioning: the block, then the caption


def test_a_training_row_starts_with_the_chat_prompt_token_for_token(tiny_model):
    from onellm.data.batches import tokens
    from onellm.data.sources import Example
    from onellm.inference.chat import prompt_ids

    m, chat = tiny_model, tiny_model.config.chat
    turns = [("What is <image> this?", "it is <seg> here"), ("Where?", "on the left")]
    ids, labels = tokens(
        Example(None, None, turns),
        m.layout,
        chat,
        np.random.default_rng(0),
        use_turns=True,
        given=["image"],
    )
    first = prompt_ids(m, render_prompt(chat, turns[0][0]), ["image"])
    later = prompt_ids(m, render_prompt(chat, "Where?", turns[:1]), ["image"])
    assert ids[: len(first)] == first and set(labels[: len(first)]) == {-100}
    assert ids[: len(later)] == later  # history replays the answer as training read it
    assert labels[len(later) :] == ids[len(later) :]  # the last answer and EOS are targets
    assert ids[-1] == m.text_tokenizer.eos_token_id
    run = [i for i, t in enumerate(ids) if t == m.layout.placeholder_ids["image"]]
    assert len(run) == m.layout.block_len and run == list(range(run[0], run[0] + len(run)))
    assert run[0] > 5  # where the question names <image>, not after BOS
    assert ids.count(m.outputs.token_ids["seg"]) == 1  # an answer's <seg> is the special id


def test_generate_options_pass_through(tiny_model):
    beams = tiny_model.chat(img(), modality="image", prompt="hi", max_new_tokens=4, num_beams=2)
    assert isinstance(beams.text, str)
    torch.manual_seed(0)
    a = tiny_model.chat(
        img(), modality="image", prompt="hi", max_new_tokens=6, temperature=1.0, top_p=0.9
    )
    torch.manual_seed(0)
    b = tiny_model.chat(
        img(), modality="image", prompt="hi", max_new_tokens=6, temperature=1.0, top_p=0.9
    )
    assert a.token_ids == b.token_ids


@pytest.fixture
def unchanged(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    vocab = len(tiny_model.text_tokenizer)
    yield tiny_model
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert len(tiny_model.text_tokenizer) == vocab


BAD = {
    "unknown modality": (
        dict(inputs=img(), modality="smell", prompt="hi"),
        r"unknown modality 'smell'",
    ),
    "unreadable file": (
        dict(inputs="/no/such/file.png", modality="image", prompt="hi"),
        r"^image: expected a readable file",
    ),
    "placeholder without input": (
        dict(prompt="look: <image>"),
        r"^image: the text has a <image> placeholder, expected a image input, got none",
    ),
    "input without its placeholder": (
        dict(inputs={"image": img(), "audio": RAW["audio"]()}, prompt="<image> <image> <audio>"),
        r"^image: expected one <image> placeholder .* got 2",
    ),
    "placeholder for another modality": (
        dict(inputs=img(), modality="image", prompt="<audio>?"),
        r"^audio: the text has a <audio> placeholder",
    ),
    "empty prompt, no input": (
        dict(prompt="   "),
        r"expected a prompt or an input, got an empty prompt and no input",
    ),
    "modality without input": (
        dict(modality="image", prompt="hi"),
        r"^image: a modality was named but no input",
    ),
    "input without modality": (dict(inputs=img(), prompt="hi"), r"expected modality="),
    "history without prompt": (
        dict(inputs=img(), modality="image", history=[("a", "b")]),
        r"expected a prompt to follow the history",
    ),
    "stream a batch": (
        dict(inputs=[img(), img(1)], modality="image", prompt="hi", stream=True),
        r"streaming takes one input, got a batch of 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_chat_input(unchanged, case):
    kwargs, message = BAD[case]
    with pytest.raises(InputError, match=message):
        unchanged.chat(**kwargs)


def test_a_modality_says_which_lists_and_dicts_are_one_input(tiny_model):
    from onellm.inference.chat import normalise_inputs

    wave = [0.1 * np.sin(i / 5) for i in range(16000)]  # a waveform as a list: audio's is_sample
    samples, batched = normalise_inputs(tiny_model, wave, "audio")
    assert not batched and samples == [{"audio": wave}]
    clips = [np.zeros(16000, np.float32), np.ones(16000, np.float32)]
    samples, batched = normalise_inputs(tiny_model, clips, "audio")
    assert batched and len(samples) == 2
    pair = {"rgb": "a.png", "depth": "a_depth.png"}  # keys that are not all modalities: one raw
    assert normalise_inputs(tiny_model, pair, "rgbd") == ([{"depth": pair}], False)
    both = {"image": "a.png", "audio": "a.wav"}
    assert normalise_inputs(tiny_model, both, None) == ([both], False)
    with pytest.raises(InputError, match="a dict names its modalities; drop modality="):
        normalise_inputs(tiny_model, both, "image")
    reply = tiny_model.chat(wave, modality="audio", max_new_tokens=2)
    assert isinstance(reply, ChatResponse)
