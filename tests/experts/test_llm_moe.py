"""`llm_experts: {kind: moe_layers}` (experts/llm/moe_layers.py): upcycled LLM MLP layers,
their routing by position, the KV cache, batches, save/load and add_modality."""

from __future__ import annotations

import pytest
import torch

from onellm import OneLLM
from onellm.errors import ConfigError
from onellm.inference.chat import Conversation, generate
from onellm.modeling.template import render_prompt
from tests.conftest import TINY, random_input

MOE = "llm_experts={kind: moe_layers, layers: [1, 3], experts: 4, k: 2"


def build(options: str = "", seed: int = 0) -> OneLLM:
    torch.manual_seed(seed)
    return OneLLM.from_config(TINY, [f"{MOE}{options}}}"] if options is not None else []).eval()


def prompt(model: OneLLM, modality: str = "image", rows: int = 2) -> torch.Tensor:
    ids, _ = model.layout.row([("What is it?", False)], [modality])
    return torch.tensor([ids] * rows)


def logits(model: OneLLM, modality: str = "image") -> torch.Tensor:
    torch.manual_seed(1)
    x = random_input(model, modality)
    with torch.no_grad():
        return model(prompt(model, modality), inputs={modality: x}).logits


@pytest.fixture(scope="module")
def dense() -> OneLLM:
    torch.manual_seed(0)
    return OneLLM.from_config(TINY).eval()


@pytest.fixture(scope="module")
def trained() -> OneLLM:
    """Experts far apart (noise 0.5) and per-modality gates: routing changes the logits."""
    return build(", noise: 0.5, router: per_modality")


@pytest.mark.parametrize(
    "options",
    [", noise: 0.0", ", noise: 0.0, router: per_modality", ", noise: 0.0, shared: true"],
)
def test_upcycled_at_noise_0_computes_the_dense_model(dense, options):
    """Every copy computes the dense MLP and a position's top-k weights sum to 1."""
    torch.testing.assert_close(logits(build(options)), logits(dense), rtol=1e-5, atol=1e-5)


def test_one_expert_at_noise_0_is_bit_identical_to_the_dense_model(dense):
    """With E = k = 1 the weight is exactly 1 and the expert runs on every position, so
    even the rounding is the dense MLP's (with more experts a matmul over a subset of the
    rows may round differently: the test above)."""
    one = OneLLM.from_config(
        TINY, ["llm_experts={kind: moe_layers, layers: [1, 3], experts: 1, k: 1}"]
    )
    one.eval()
    assert torch.equal(logits(one), logits(dense))
    assert torch.equal(logits(build(", experts: 1, k: 1, shared: true")), logits(dense))


def test_experts_are_copies_the_first_exact_and_the_llm_keeps_its_mlp(trained, dense):
    layer = trained.llm_experts.layers["1"]
    mlp = trained.llm.model.layers[1].mlp
    assert all(
        torch.equal(a, b)
        for a, b in zip(layer.experts[0].parameters(), mlp.parameters(), strict=True)
    )
    shaken = layer.experts[2].gate_proj.weight
    assert not torch.equal(shaken, mlp.gate_proj.weight)
    assert float((shaken / mlp.gate_proj.weight - 1).detach().std()) == pytest.approx(0.5, rel=0.1)
    assert set(layer.router.gates) == {"text", *trained.modalities}
    assert not torch.allclose(logits(trained), logits(dense), atol=1e-3)  # routing matters


def test_each_position_reads_its_modality_gate(trained):
    """A row with an image run then an audio run: the positions up to the audio run read
    image's gate, the rest audio's (the probe: the recorded router input and logits)."""
    seen = []
    trained.llm_experts.recorder = lambda *call: seen.append(call)
    try:
        ids, _ = trained.layout.row([("Compare them.", False)], ["image", "audio"])
        x = {m: random_input(trained, m, batch=1) for m in ("image", "audio")}
        with torch.no_grad():
            trained(torch.tensor([ids]), inputs=x)
    finally:
        trained.llm_experts.recorder = None
    (pool, x1, r, _, groups, names), _ = seen
    assert pool == "layer 1" and set(groups.tolist()) == {
        names.index("image"),
        names.index("audio"),
    }
    gates = trained.llm_experts.layers["1"].router.gates
    audio_at = names.index("audio")
    first_audio = int((groups == audio_at).nonzero()[0])
    assert (groups[:first_audio] == names.index("image")).all() and (
        groups[first_audio:] == audio_at
    ).all()
    for m in ("image", "audio"):
        at = groups == names.index(m)
        torch.testing.assert_close(r.logits[at], gates[m](x1[at]))
        assert not torch.allclose(r.logits[at], gates["text"](x1[at]))


def test_a_cached_step_equals_the_whole_sequence(trained):
    x = random_input(trained, "image", batch=1)
    ids = prompt(trained, rows=1)
    embeds = trained.embed(ids, {"image": trained.modality_block(x, "image")})
    with torch.no_grad():
        with trained.mixing(ids, None):
            whole = trained.llm(inputs_embeds=embeds).logits
        with trained.mixing(ids[:, :-2], None):  # generate's: the prompt, then a step
            first = trained.llm(inputs_embeds=embeds[:, :-2], use_cache=True)
            step = trained.llm(
                inputs_embeds=embeds[:, -2:-1],
                use_cache=True,
                cache=first.past_key_values,
            )
    torch.testing.assert_close(step.logits[:, -1], whole[:, -2], rtol=1e-4, atol=1e-5)


def test_generation_cached_uncached_batched_and_alone_agree(trained):
    """Rows of two modalities in one left-padded generate say what each says alone, and
    with or without the KV cache."""
    asks = [("image", "What is it?"), ("audio", "What do you hear in this sound?")]
    inputs = {m: random_input(trained, m, batch=1) for m, _ in asks}
    rows = [
        Conversation({m: inputs[m]}, render_prompt(trained.config.chat, q, []), None)
        for m, q in asks
    ]
    together = [r.token_ids for r in generate(trained, rows, max_new_tokens=8)]
    alone = [generate(trained, [r], max_new_tokens=8)[0].token_ids for r in rows]
    uncached = [
        generate(trained, [r], max_new_tokens=8, use_cache=False)[0].token_ids for r in rows
    ]
    assert together == alone == uncached
    assert together[0] != together[1]


def test_saved_models_load_back_with_their_experts(trained, tmp_path):
    trained.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.config.llm_experts["kind"] == "moe_layers"
    assert back.config.llm_experts["router"] == "per_modality"
    mine, theirs = trained.llm_experts.state_dict(), back.llm_experts.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(logits(back, "audio"), logits(trained, "audio"))


def test_add_modality_gives_it_a_gate_and_leaves_the_others_bit_identical(tmp_path):
    model = build(", noise: 0.5, router: per_modality")
    before = {m: logits(model, m) for m in ("image", "audio")}
    model.add_modality("thermal", {"type": "depth"})
    gates = model.llm_experts.layers["3"].router.gates
    assert torch.equal(gates["thermal"].weight, gates["text"].weight)  # text's, to start
    for m, want in before.items():
        assert torch.equal(logits(model, m), want)
    with torch.no_grad():  # as if trained: the saved run keeps thermal's own gate
        gates["thermal"].weight.add_(1.0)
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(
        back.llm_experts.layers["3"].router.gates["thermal"].weight, gates["thermal"].weight
    )
    assert torch.equal(logits(back, "thermal"), logits(model, "thermal"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (", k: 5", r"llm_experts.k: expected 1 <= k <= experts \(4\), got 5"),
        (", layers: [1, 9]", r"llm_experts.layers: expected layers in 0..3, got \[1, 9\]"),
        (", router: modal", "llm_experts.router: expected one of"),
        (", capacity: 0", "llm_experts.capacity: expected > 0 or null, got 0"),
        (", new_router_from: sonar", "llm_experts.new_router_from: expected one of"),
        (", gates: 2", "unknown key 'llm_experts.gates'"),
    ],
)
def test_bad_settings_are_refused_by_name(options, message):
    with pytest.raises(ConfigError, match=message):
        build(options)
