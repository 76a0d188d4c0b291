"""chat.py's batch of conversations (each row its own prompt, inputs and limit), its
streaming that ends with the whole reply, and replies saved as files."""

import threading

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessorList

from onellm.inference.chat import ChatResponse, ChatStream, Conversation, generate
from onellm.modeling.template import render_prompt
from tests.conftest import ForceAt, Steps
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


def test_a_cancelled_row_stops_at_its_next_token_and_the_others_are_unchanged(tiny_model):
    m, chat = tiny_model, tiny_model.config.chat
    asks = [  # (inputs, prompt, limit): the first would run 200 tokens (the tiny model's
        # greedy story has no EOS), the others stop early on their own
        ({"image": img(0)}, "Tell me a long story.", 200),
        ({}, "hello there, what can you see?", 12),
        ({"point": RAW["point"]()}, "What shape?", 9),
    ]
    rows = [
        Conversation(
            {k: m.preprocess(v, k) for k, v in raws.items()},
            render_prompt(chat, prompt),
            max_new_tokens=n,
        )
        for raws, prompt, n in asks
    ]
    gone, steps, at_cancel = threading.Event(), Steps(), []
    rows[0].cancelled = gone.is_set
    heard: dict[int, str] = {}

    def on_text(i: int, piece: str) -> None:
        heard[i] = heard.get(i, "") + piece
        if i == 0 and len(heard[0]) >= 5 and not gone.is_set():  # the client leaves
            gone.set()
            at_cancel.append(steps.n)

    replies = generate(
        m, rows, max_new_tokens=200, on_text=on_text, logits_processor=LogitsProcessorList([steps])
    )
    (cut,) = at_cancel
    assert len(replies[0].token_ids) <= cut + 1  # at most the token in flight
    assert steps.n <= max(cut + 1, 12) < 200  # the call ended with the rows still wanted
    assert heard[0] == replies[0].text or replies[0].text.startswith(heard[0])
    alone = m.chat(img(0), modality="image", prompt=asks[0][1], max_new_tokens=cut + 1)
    assert replies[0].token_ids == alone.token_ids[: len(replies[0].token_ids)]
    for (raws, prompt, n), got in zip(asks[1:], replies[1:], strict=True):
        want = m.chat(raws or None, prompt=prompt, max_new_tokens=n)
        assert got.token_ids == want.token_ids and got.text == want.text


def test_a_library_stream_left_early_stops_generating(tiny_model):
    steps = Steps()
    stream = tiny_model.chat(
        prompt="Tell me a long story.",
        max_new_tokens=400,
        stream=True,
        logits_processor=LogitsProcessorList([steps]),
    )
    for i, _ in enumerate(stream):
        if i == 1:
            cut = steps.n
            break  # the loop's generator is closed: the reader left
    stream.thread.join(timeout=60)
    assert not stream.thread.is_alive() and stream.response is None
    assert steps.n <= cut + 2 < 400  # the token in flight, then no more
