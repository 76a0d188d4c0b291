"""chat.py's batch of conversations (each row its own prompt, inputs and limit), its
streaming that ends with the whole reply, and replies saved as files."""

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessorList

from onellm.inference.chat import ChatResponse, ChatStream, Conversation, generate
from onellm.modeling.template import render_prompt
from tests.conftest import ForceAt
from tests.modalities.test_contract import RAW


def img(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def test_stream_ends_with_the_whole_reply_masks_included(tiny_model):
    force = LogitsProcessorList([ForceAt(tiny_model.outputs.token_ids["seg"], 1)])
    kw = dict(modality="image", prompt="segment it", max_new_tokens=6, logits_processor=force)
    stream = tiny_model.chat(img(), stream=True, **kw)
    assert isinstance(stream, ChatStream) and stream.response is None
    pieces = list(stream)
    whole = tiny_model.chat(img(), **kw)
    assert "".join(pieces) == stream.response.text == whole.text
    assert stream.response.token_ids == whole.token_ids
    assert len(whole.masks) == 1 and torch.equal(stream.response.masks[0], whole.masks[0])


def test_rows_with_their_own_prompts_inputs_and_limits_equal_each_alone(tiny_model):
    m, chat = tiny_model, tiny_model.config.chat
    asks = [  # (inputs, prompt, history, limit)
        ({"image": img(0)}, "What is this?", [], 9),
        ({}, "hello there, what can you see?", [("hi", "a circle")], 4),
        ({"image": img(1), "audio": RAW["audio"]()}, "Does <audio> match?", [], 7),
        ({"point": RAW["point"]()}, None, [], 5),  # captioning, no prompt
    ]
    rows = [
        Conversation(
            {k: m.preprocess(v, k) for k, v in raws.items()},
            render_prompt(chat, prompt, history),
            max_new_tokens=n,
        )
        for raws, prompt, history, n in asks
    ]
    heard: dict[int, str] = {}
    together = generate(
        m, rows, max_new_tokens=64, on_text=lambda i, p: heard.__setitem__(i, heard.get(i, "") + p)
    )
    for (raws, prompt, history, n), got, i in zip(asks, together, range(4), strict=True):
        alone = m.chat(raws or None, prompt=prompt, history=history, max_new_tokens=n)
        assert got.token_ids == alone.token_ids and got.text == alone.text, i
        assert len(got.token_ids) <= n
        assert heard.get(i, "") == got.text  # streamed pieces join to the text
    assert len({len(r.token_ids) for r in together}) > 1  # the limits did differ


def test_a_reply_saves_its_masks_and_images(tmp_path):
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[1:3, 2:6] = True
    picture = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    paths = ChatResponse("x", masks=[mask], images=[picture]).save(tmp_path / "out", "r")
    assert [p.name for p in paths] == ["r-mask-0.png", "r-image-0.png"]
    assert np.array_equal(np.array(Image.open(paths[0])) > 127, mask.numpy())
    assert np.array_equal(np.array(Image.open(paths[1])), np.array(picture))
    assert ChatResponse("no outputs").save(tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_replies_compare_by_value():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    assert ChatResponse("a", [1, 2], masks=[mask]) == ChatResponse(
        "a", [1, 2], masks=[mask.clone()]
    )
    assert ChatResponse("a", masks=[]) == ChatResponse("a")  # no masks is no masks
    assert ChatResponse("a", masks=[mask]) != ChatResponse("a", masks=[~mask])
    assert ChatResponse("a") != ChatResponse("b")
