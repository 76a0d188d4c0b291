"""Packed rows (onellm/data/packing.py): first-fit decreasing, restarting positions, and a
row of several samples that gives each the logits it gets alone."""

import numpy as np
import pytest
import torch

from onellm import OneLLM
from onellm.data import shapes
from onellm.data.batches import tokens
from onellm.data.packing import (
    AUTO_MIN_SAVING,
    first_fit_decreasing,
    is_packed,
    min_saving,
    pack,
    sample_index,
    saves,
    unpack,
)
from onellm.errors import ConfigError
from onellm.modeling.llm_experts import expert_names, position_modalities


def test_first_fit_decreasing_fills_rows_longest_first_then_evens_them():
    lengths = [3, 7, 2, 5, 4, 1]
    bins = first_fit_decreasing(lengths, 8)
    assert bins == [[1, 5], [2, 3], [0, 4]]  # 7+1, 5+2, 4+3; each row in the given order
    # first fit alone: 5+4 and 3+3 (rows of 9, 3 padding); evened: 5+3 and 4+3 (8, 1)
    assert first_fit_decreasing([5, 4, 3, 3], 9) == [[0, 3], [1, 2]]
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    with pytest.raises(ConfigError, match=r"^pack_tokens: expected at least .* 7 .*, got 6"):
        first_fit_decreasing(lengths, 6)


def test_pack_restarts_positions_and_unpacks_each_sample():
    rows = [([1, 5, 6, 2], [-100, 5, 6, 2]), ([1, 7, 2], [-100, 7, 2]), ([1, 9], [9, 9])]
    batch, order = pack(rows, 0, 6)
    assert order == [0, 1, 2]  # [4], [3 + 2]: two rows of 5, not [4 + 2] and [3]
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 0], [1, 7, 2, 1, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5]
    # a sample's first token is no target: nothing from the sample before predicts it
    assert batch["labels"].tolist() == [[-100, 5, 6, 2, -100], [-100, 7, 2, -100, 9]]
    back = unpack(batch["input_ids"], batch["unpack"], fill=-1)
    assert back.tolist() == [[1, 5, 6, 2], [1, 7, 2, -1], [1, 9, -1, -1]]
    assert sample_index(batch["position_ids"]).tolist() == [[0] * 4 + [1], [0] * 3 + [1] * 2]
    # a full row holds no padding
    full, _ = pack(rows[:1] + rows[2:], 0, 6)
    assert bool(full["attention_mask"].all()) and full["input_ids"].shape == (1, 6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OneLLM.from_config("tiny").eval()


def sample(model, modality, i):
    """One caption sample of `modality`: (ids, labels) and its input (1, ...)."""
    ex = shapes.render(shapes.modality_instance(modality, model), i, "train", 0)
    x = model.modalities[modality].preprocess(ex.input).unsqueeze(0)
    row = tokens(
        ex, model.layout, model.config.chat, np.random.default_rng(i), use_turns=False,
        given=[modality],
    )  # fmt: skip
    return row, x


def test_a_row_of_three_samples_of_two_modalities_gives_each_its_own_logits(model):
    parts = [sample(model, "image", 0), sample(model, "audio", 1), sample(model, "image", 2)]
    rows = [r for r, _ in parts]
    batch, order = pack(rows, 0, sum(len(ids) for ids, _ in rows))
    assert batch["input_ids"].shape[0] == 1 and order == [0, 1, 2]
    inputs = {"image": torch.cat([parts[0][1], parts[2][1]]), "audio": parts[1][1]}

    def packed_logits():
        with torch.no_grad():
            return model(
                batch["input_ids"], batch["attention_mask"], position_ids=batch["position_ids"],
                inputs=inputs,
            ).logits  # fmt: skip

    sdpa = packed_logits()  # SDPA with transformers' block-diagonal mask
    got = unpack(sdpa, batch["unpack"])
    for k, ((ids, _), x) in enumerate(parts):
        with torch.no_grad():
            alone = model(torch.tensor([ids]), inputs={"audio" if k == 1 else "image": x})
        torch.testing.assert_close(got[k, : len(ids)], alone.logits[0], rtol=1e-4, atol=1e-5)
    model.llm.config._attn_implementation = "flex_attention"  # the other CPU path: a block
    try:  # mask (compiled once for this shape, ~10 s on 2 cores)
        torch.testing.assert_close(packed_logits(), sdpa, rtol=1e-4, atol=1e-5)
    finally:
        model.llm.config._attn_implementation = "sdpa"


def test_each_packed_sample_routes_by_its_own_runs(model):
    ids = model.layout.placeholder_ids
    img, aud = ids["image"], ids["audio"]
    # text alone | BOS, image run, text | BOS, audio run, text; then padding
    row = torch.tensor([[1, 5, 6, 1, img, img, 7, 1, aud, 8, 0]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 0]])
    mask = torch.tensor([[1] * 10 + [0]])
    names = expert_names(ids)
    got = position_modalities(row, ids, mask, pos)[0].tolist()
    t, i, a = names.index("text"), names.index("image"), names.index("audio")
    assert got == [t, t, t, i, i, i, i, a, a, a, t]
    # unpacked, the same row is one sample: BOS and its text take the first run's
    assert position_modalities(row, ids, mask)[0].tolist()[:3] == [i, i, i]


def test_only_restarting_positions_are_packed():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert is_packed(packed) and is_packed(packed, torch.ones_like(packed))
    left = torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])  # generate's, left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert (
        not is_packed(left, mask) and not is_packed(torch.arange(5)[None]) and not is_packed(None)
    )


def test_auto_packs_a_micro_batch_only_where_it_removes_a_fifth_of_the_padding():
    # equal lengths: packed rows are as long as padded ones, so the masked kernel buys nothing
    assert not saves([10, 10, 10, 10], 40, AUTO_MIN_SAVING)
    assert saves([10, 10, 10, 10], 40, 0.0)  # packing: true packs anyway
    # one long sample and four short: 40 packed positions against 100 padded
    assert saves([20, 5, 5, 5, 5], 40, AUTO_MIN_SAVING)
    assert min_saving("auto") == AUTO_MIN_SAVING and min_saving(True) == 0.0
