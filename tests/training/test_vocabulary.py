"""The stage start's check: caption words the LLM has never said, and what to train."""

import json

import pytest
import torch

from onellm import OneLLM
from onellm.data.sources import Source
from onellm.modeling.build import shapes_captions
from onellm.training import vocabulary
from onellm.training.stage import SourceConfig
from tests.conftest import ROOT, TINY

ECG = ROOT / "examples" / "ecg" / "onellm_ecg.py"


@pytest.fixture(scope="module")
def spoken():
    """The tiny model after its LLM learned the shapes world's captions (stage 0 in small):
    tokens that are never a target are pushed down until it never says them."""
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY)
    tok, llm = model.text_tokenizer, model.llm
    texts = shapes_captions(model.modalities.values())
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.where(ids == 0, -100, ids)
    llm.requires_grad_(True)
    opt = torch.optim.Adam(llm.parameters(), lr=3e-3)
    for step in range(40):
        batch = torch.randperm(len(rows), generator=torch.Generator().manual_seed(step))[:32]
        loss = llm(
            input_ids=ids[batch], attention_mask=(ids[batch] != 0).long(), labels=labels[batch]
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    llm.requires_grad_(False)
    return model


def test_words_map_to_the_pieces_the_tokenizer_splits_them_into(tiny_model):
    tok = tiny_model.text_tokenizer
    words = vocabulary.word_pieces(tok, "a  red heartbeat")
    assert [w for w, _ in words] == ["a", "red", "heartbeat"]
    assert len(words[1][1]) == 1  # a shapes-world word is one token
    assert len(words[2][1]) > 2  # a new word is pieces
    assert tok.decode(words[2][1]).strip() == "heartbeat"


def test_an_untrained_llm_says_everything(tiny_model):
    found = vocabulary.unsaid_words(tiny_model, ["a slow irregular heartbeat"])
    assert found["unsaid"] == [] and found["words"] == 4


def test_words_the_llm_never_said_are_named_with_their_pieces(spoken):
    contexts = shapes_captions(spoken.modalities.values())
    new = vocabulary.unsaid_words(spoken, ["a slow irregular heartbeat"], contexts)
    assert {"heartbeat", "irregular"} <= set(new["unsaid"]) and "a" not in new["unsaid"]
    pieces = new["pieces"]["heartbeat"]
    assert "".join(p for p, _ in pieces).strip() == "heartbeat"
    assert min(prob for _, prob in pieces) < vocabulary.PRODUCED
    known = vocabulary.unsaid_words(
        spoken, ["a red circle on the left", "a low steady tone"], contexts
    )
    assert known["unsaid"] == []


def test_the_stage_check_warns_until_the_llm_trains(spoken, tmp_path):
    spoken.add_modality("ecg", {"type": str(ECG)}, init_from="image")  # freezes the rest
    sources = {
        "ecg": Source(spoken, "ecg", SourceConfig(task="caption"), 0),
        "image": Source(spoken, "image", SourceConfig(task="caption"), 0),
        "text": Source(spoken, "text", SourceConfig(task="lm"), 0),  # no captions to say
    }
    found = vocabulary.check(spoken, sources)
    assert set(found) == {"ecg", "image"}
    assert found["image"]["unsaid"] == [] and found["image"]["warning"] is None
    ecg = found["ecg"]
    assert not ecg["llm_trains"] and "heartbeat" in ecg["unsaid"]
    assert "'heartbeat' (" in ecg["warning"]
    assert "trainable: ['@added', 'llm.*lora_*']" in ecg["warning"]

    records = []

    class Files:  # RunFiles' log: a record a line of metrics.jsonl
        log = staticmethod(records.append)

    vocabulary.announce(found, Files(), "add-ecg", quiet=True)
    by = {r["modality"]: r for r in records}
    assert by["ecg"]["event"] == "vocabulary" and by["ecg"]["reason"] == ecg["warning"]
    assert by["image"]["reason"] is None
    # with its LoRA training, the LLM can learn the words: no warning, the reason kept
    spoken.add_lora()
    for n, p in spoken.llm.named_parameters():
        p.requires_grad_("lora_" in n)
    trained = vocabulary.check(spoken, sources)["ecg"]
    assert trained["llm_trains"] and trained["warning"] is None
    assert trained["unsaid"] == ecg["unsaid"]  # LoRA starts as the identity


def test_a_manifests_captions_and_answers_are_checked(spoken, tmp_path):
    """One's own data: the first records' captions (or, for conversations, the answers)."""
    from PIL import Image

    Image.new("RGB", (8, 8), "purple").save(tmp_path / "star.png")
    rows = [
        {"modality": "image", "input": "star.png", "caption": "a purple star"},
        {
            "modality": "image",
            "input": "star.png",
            "conversations": [
                {"from": "human", "value": "What colour is it?"},
                {"from": "gpt", "value": "magenta"},
            ],
        },
    ]
    (tmp_path / "own.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SourceConfig(task="instruct", data=str(tmp_path / "own.jsonl"))
    source = Source(spoken, "image", cfg, 0)
    assert vocabulary.source_captions(spoken, source) == ["a purple star", "magenta"]
    found = vocabulary.check(spoken, {"image": source})["image"]
    # (the demo's stage-4 LLM never said "star" or "magenta" either; 40 steps push down less)
    assert "purple" in found["unsaid"] and "a" not in found["unsaid"] and found["words"] == 4
