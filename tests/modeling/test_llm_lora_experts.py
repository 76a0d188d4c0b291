"""Per-modality LoRA experts in the LLM (`llm_experts: {kind: lora_per_modality}`,
experts/llm/lora.py): routing by modality run, zero-initialised experts, KV cache and
batches, save/load, add_modality, merging, and bad options."""

import copy

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from onellm import OneLLM
from onellm.checkpoints.conformance import onellm_logits
from onellm.errors import ConfigError, InputError
from onellm.inference.chat import Conversation, generate
from onellm.modeling import activation_checkpointing
from onellm.modeling.template import render_prompt
from tests.conftest import TINY, random_input
from tests.modalities.test_contract import RAW
from tests.modeling.test_add_modality import PLUGIN, old_logits

EXPERTS = "llm_experts={kind: lora_per_modality, r: 4, alpha: 8}"
GREEDY = dict(max_new_tokens=6, min_new_tokens=6)


def lora_layers(model):
    return [m for m in model.llm.modules() if hasattr(m, "lora_A") and len(m.lora_A)]


def trained(model):
    """Every expert's B random (peft starts it at zero): each expert now moves the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model):
            for b in layer.lora_B.values():
                b.weight.copy_(torch.randn(b.weight.shape, generator=g) * 0.5)
    return model


@pytest.fixture(scope="module")
def experts():
    torch.manual_seed(0)
    return trained(OneLLM.from_config(TINY, [EXPERTS]).eval())


def img(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def test_untrained_experts_leave_the_logits_bit_identical():
    torch.manual_seed(0)
    dense = OneLLM.from_config(TINY).eval()
    torch.manual_seed(0)
    model = OneLLM.from_config(TINY, [EXPERTS]).eval()
    assert isinstance(model.llm, PeftModel)
    assert sorted(model.llm.peft_config) == sorted(["text", *model.modalities])
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    for m in ("image", "audio", "fmri"):
        x = random_input(dense, m)
        assert torch.equal(onellm_logits(dense, ids, x, m), onellm_logits(model, ids, x, m)), m
    assert torch.equal(onellm_logits(dense, ids), onellm_logits(model, ids))


def test_each_position_runs_its_modality_runs_expert(experts):
    """A probe on the LoRA inputs: row BOS, image run, text, audio run, text; each adapter's
    lora_A sees its own positions and zeros elsewhere; adapters no position uses never run."""
    m = experts
    layer = lora_layers(m)[0]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.lora_A[n].register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, a[0]))
        for n in m.llm.peft_config
    ]
    tok = m.text_tokenizer
    ids, _ = m.layout.row([("<image> a b <audio> c d", False)], ["image", "audio"])
    ids = torch.tensor([ids])
    x = {k: random_input(m, k, batch=1) for k in ("image", "audio")}
    with torch.no_grad():
        m(ids, inputs=x)
    for h in hooks:
        h.remove()
    assert set(seen) == {"image", "audio"}  # text and the other modalities' experts idle
    audio_at = int((ids[0] == m.layout.placeholder_ids["audio"]).nonzero()[0])
    used = {n: seen[n][0].abs().sum(-1) > 0 for n in seen}
    assert ids[0, 0] == tok.bos_token_id
    assert used["image"][:audio_at].all() and not used["image"][audio_at:].any()
    assert used["audio"][audio_at:].all() and not used["audio"][:audio_at].any()


def test_cached_generate_equals_uncached_and_rows_equal_each_alone(experts):
    m, chat = experts, experts.config.chat
    for modality in ("image", "audio", "imu"):
        raw = RAW[modality]()
        cached = m.chat(raw, modality=modality, prompt="What is this?", **GREEDY)
        plain = m.chat(raw, modality=modality, prompt="What is this?", use_cache=False, **GREEDY)
        assert cached.token_ids == plain.token_ids, modality
    asks = [  # rows of different modalities (and none, and two) in one generate
        ({"image": img(0)}, "What is this?", 6),
        ({}, "hello there, what can you see?", 4),
        ({"image": img(1), "audio": RAW["audio"]()}, "Does <audio> match?", 5),
        ({"point": RAW["point"]()}, None, 6),
    ]
    rows = [
        Conversation(
            {k: m.preprocess(v, k) for k, v in raws.items()},
            render_prompt(chat, prompt, []),
            max_new_tokens=n,
        )
        for raws, prompt, n in asks
    ]
    together = generate(m, rows, max_new_tokens=16)
    for (raws, prompt, n), got in zip(asks, together, strict=True):
        alone = m.chat(raws or None, prompt=prompt, max_new_tokens=n)
        assert got.token_ids == alone.token_ids, prompt


def test_the_experts_matter_and_a_modality_reads_only_its_own(experts):
    m = copy.deepcopy(experts)
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    x = random_input(m, "image")
    before = onellm_logits(m, ids, x, "image")
    with torch.no_grad():  # another modality's expert: the image prompt does not read it
        for layer in lora_layers(m):
            layer.lora_B["audio"].weight.zero_()
    assert torch.equal(before, onellm_logits(m, ids, x, "image"))
    with torch.no_grad():
        for layer in lora_layers(m):
            layer.lora_B["image"].weight.zero_()
    assert not torch.allclose(before, onellm_logits(m, ids, x, "image"))


def test_save_and_load_give_the_same_logits(experts, tmp_path):
    out = experts.save_pretrained(tmp_path / "run")
    assert (out / "lora" / "image" / "adapter_model.safetensors").is_file()
    back = OneLLM.from_pretrained(out).eval()
    assert back.config.llm_experts == experts.config.llm_experts
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    for m in ("image", "depth"):
        x = random_input(experts, m)
        assert torch.equal(onellm_logits(experts, ids, x, m), onellm_logits(back, ids, x, m))
    assert not any(p.requires_grad for n, p in back.named_parameters() if "lora_" in n)
    trainable = OneLLM.from_pretrained(out, trainable_lora=True)
    assert all(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)


def test_add_modality_adds_its_expert_and_leaves_the_others_bit_identical(experts):
    m = copy.deepcopy(experts)
    inputs = {k: random_input(m, k) for k in m.modalities}
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    before = old_logits(m, inputs, ids)
    text = onellm_logits(m, ids)
    new = m.add_modality("thermal", {"type": str(PLUGIN)}, init_from="image")
    after = old_logits(m, inputs, ids)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(text, onellm_logits(m, ids))
    assert "thermal" in m.llm.peft_config
    lora_new = [n for n in new if "lora_" in n]
    assert lora_new and all(".thermal." in n for n in lora_new)
    assert all(p.requires_grad for n, p in m.named_parameters() if n in lora_new)
    for layer in lora_layers(m):  # init_from: the LLM expert starts as image's too
        assert torch.equal(layer.lora_B["thermal"].weight, layer.lora_B["image"].weight)
        assert torch.equal(layer.lora_A["thermal"].weight, layer.lora_A["image"].weight)
    m.add_modality("depth2", {"type": "depth"})  # without init_from: zero B, it adds nothing
    assert all(not layer.lora_B["depth2"].weight.any() for layer in lora_layers(m))
    for k in before:
        assert torch.equal(before[k], old_logits(m, {k: inputs[k]}, ids)[k]), k
    y = torch.randn(2, 1, 32, 32)
    assert onellm_logits(m, ids, y, "thermal").shape == before["image"].shape


def test_merged_model_answers_as_the_experts_for_its_modality(experts, tmp_path):
    m = copy.deepcopy(experts)
    raw = RAW["audio"]()
    want = m.chat(raw, modality="audio", prompt="What is this?", **GREEDY)
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    x = random_input(m, "audio")
    logits = onellm_logits(m, ids, x, "audio")
    assert m.merge_llm_experts("audio") is m
    assert isinstance(m.llm, LlamaForCausalLM) and m.llm_experts is None
    assert m.config.llm_experts is None
    assert (
        m.chat(raw, modality="audio", prompt="What is this?", **GREEDY).token_ids == want.token_ids
    )
    torch.testing.assert_close(onellm_logits(m, ids, x, "audio"), logits, rtol=1e-5, atol=1e-5)
    # another modality's prompt now runs audio's expert, not its own (why merging is per modality)
    y = random_input(m, "image")
    assert not torch.allclose(
        onellm_logits(m, ids, y, "image"), onellm_logits(experts, ids, y, "image")
    )
    back = OneLLM.from_pretrained(m.save_pretrained(tmp_path / "merged"))
    assert back.llm_experts is None and not (tmp_path / "merged" / "lora").exists()
    with pytest.raises(InputError, match="no llm_experts"):
        m.merge_llm_experts("audio")


def test_learned_routing_starts_on_each_positions_own_expert_and_grows():
    torch.manual_seed(0)
    dense = OneLLM.from_config(TINY).eval()
    torch.manual_seed(0)
    m = OneLLM.from_config(TINY, [EXPERTS.replace("}", ", route: learned}")]).eval()
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    x = random_input(m, "video")
    assert torch.equal(onellm_logits(dense, ids, x, "video"), onellm_logits(m, ids, x, "video"))
    gates = next(iter(m.llm_experts.gates.values()))
    with torch.no_grad():
        w = gates(torch.randn(1, 3, gates.weight.shape[1]), torch.tensor([[0, 2, 5]]))
    assert w[0, 1, 2] == pytest.approx(0.982, abs=1e-3) and w[0, 1, 0] == pytest.approx(
        0.018, abs=1e-3
    )
    assert {n.split(".")[0] for n, _ in m.named_parameters() if "gates" in n} == {"llm_experts"}
    trained(m)
    before = onellm_logits(m, ids, x, "video")
    m.add_modality("thermal", {"type": str(PLUGIN)}, init_from="image")
    assert gates.weight.shape[0] == 1 + len(m.modalities)  # text, then each modality
    # learned gates weigh thermal's expert at every position: it starts at zero, not as image's
    assert all(not layer.lora_B["thermal"].weight.any() for layer in lora_layers(m))
    assert torch.equal(before, onellm_logits(m, ids, x, "video"))
    with pytest.raises(InputError, match="route: learned"):
        m.merge_llm_experts("video")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "llm_experts={kind: nope}",
            "llm_experts.kind: expected one of .*lora_per_modality.*got 'nope'",
        ),
        ("llm_experts={r: 4}", "llm_experts.kind: expected"),
        ("llm_experts={kind: lora_per_modality, rank: 4}", "unknown key 'llm_experts.rank'"),
        (
            "llm_experts={kind: lora_per_modality, route: top}",
            "llm_experts.route: expected one of modality, learned, got 'top'",
        ),
        ("llm_experts={kind: lora_per_modality, r: 0}", "llm_experts.r/alpha/dropout"),
        (
            "llm_experts={kind: lora_per_modality, target_modules: [qq]}",
            "llm_experts.target_modules: .*got 'qq'",
        ),
        (
            "llm_experts={kind: lora_per_modality, names: [a]}",
            "llm_experts.names: set from the model",
        ),
    ],
)
def test_bad_options_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        OneLLM.from_config(TINY, [override])


def test_a_shared_lora_beside_the_experts_is_refused(experts):
    with pytest.raises(InputError, match="LoRA is already on"):
        copy.deepcopy(experts).add_lora()


@pytest.mark.parametrize("route", ["modality", "learned"])
def test_activation_checkpointing_recomputes_with_the_forwards_routes(route):
    """The LLM's layers are recomputed in backward, after the routing context has closed:
    the experts route them as the forward did (the gradients match, no checkpoint error)."""
    torch.manual_seed(0)
    m = trained(OneLLM.from_config(TINY, [EXPERTS.replace("}", f", route: {route}}}")])).train()
    ids, _ = m.layout.widen(torch.randint(3, 400, (2, 7)), ["image"])
    x = random_input(m, "image")

    def grads():
        m.zero_grad(set_to_none=True)
        m(ids, inputs={"image": x}, labels=ids.masked_fill(ids >= 512, -100)).loss.backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    activation_checkpointing.enable(m)
    again = grads()
    assert plain.keys() == again.keys() and any(".image." in n for n in plain)
    for n, g in plain.items():
        torch.testing.assert_close(again[n], g, msg=n)


def test_a_run_with_one_shared_lora_seeds_every_expert(tmp_path):
    """A run trained with `lora:` loaded with llm_experts in its overrides: each expert starts
    as the shared LoRA, so every prompt answers as before; a LoRA of another rank is left
    out (the experts start as built)."""
    torch.manual_seed(0)
    shared = OneLLM.from_config(TINY).eval()
    shared.add_lora(r=4, alpha=8)
    trained(shared)
    run = shared.save_pretrained(tmp_path / "run")
    seeded = OneLLM.from_pretrained(run, overrides=[EXPERTS]).eval()
    ids = torch.randint(3, 400, (2, 7))
    ids[:, 0] = 1
    for m in ("image", "imu"):
        x = random_input(shared, m)
        assert torch.equal(onellm_logits(shared, ids, x, m), onellm_logits(seeded, ids, x, m))
    assert torch.equal(onellm_logits(shared, ids), onellm_logits(seeded, ids))
    other = OneLLM.from_pretrained(run, overrides=[EXPERTS.replace("r: 4", "r: 2")]).eval()
    assert not any(layer.lora_B["image"].weight.any() for layer in lora_layers(other))


def test_beam_search_is_refused_and_the_experts_are_left_as_they_were(experts):
    raw = RAW["image"]()
    with pytest.raises(InputError, match="beam search is not supported"):
        experts.chat(raw, modality="image", prompt="What is this?", num_beams=2, max_new_tokens=3)
    assert experts.llm_experts._call is None and experts.llm_experts._active == ["text"]
    ok = experts.chat(raw, modality="image", prompt="What is this?", **GREEDY)
    assert len(ok.token_ids) == GREEDY["max_new_tokens"]


def test_a_run_with_experts_loads_without_them_when_asked(experts, tmp_path):
    run = experts.save_pretrained(tmp_path / "run")
    dense = OneLLM.from_pretrained(run, overrides=["llm_experts=null"])
    assert dense.llm_experts is None and isinstance(dense.llm, LlamaForCausalLM)
