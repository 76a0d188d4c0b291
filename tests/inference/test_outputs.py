"""Output experts in the model: <seg> -> masks, <gen> groups -> images, trained by gradient."""

import numpy as np
import pytest
import torch
import yaml
from transformers import LogitsProcessorList

from onellm import OneLLM
from onellm.errors import ConfigError
from onellm.experts.output.masks import mask_loss
from onellm.inference import chat
from onellm.inference import output_states as outputs
from tests.conftest import TINY

OUTPUTS = {
    "seg": {
        "decoder": {
            "type": "sam",
            "image_size": 64,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "heads": 2,
            "global_attn": [1],
            "window_size": 4,
            "prompt_dim": 32,
            "decoder_mlp": 64,
            "decoder_heads": 2,
        }
    },
    "gen": {
        "decoder": {"type": "diffusion", "tiny": {"sample_size": 16, "cross_dim": 32}, "steps": 3},
        "tokens": 4,
        "head": {"width": 32, "num_queries": 8},
    },
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = yaml.safe_load(TINY.read_text())
    return OneLLM.from_config({**cfg, "outputs": OUTPUTS}).eval()


def last_hidden(model, ids, attention_mask=None, blocks=None):
    """A second full pass over `ids`: last-layer states and input embeddings (B, L, D)."""
    embeds = model.embed(ids, blocks)
    positions = None
    if attention_mask is not None:  # as generate counts positions under left padding
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model.llm(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=positions,
        output_hidden_states=True,
        use_cache=False,
    )
    return out.hidden_states[-1], embeds


def image(h=40, w=48):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def forced(model, token, n):
    """generate kwargs that make the model emit `token` n times."""
    tid = model.outputs.token_ids[token]
    return {"sequence_bias": {(tid,): 100.0}, "max_new_tokens": n, "min_new_tokens": n}


def test_output_tokens_are_single_ids(model):
    tok = model.text_tokenizer
    for task, i in model.outputs.token_ids.items():
        assert tok(f"<{task}>", add_special_tokens=False).input_ids == [i]


def test_two_seg_tokens_give_two_masks_at_the_input_resolution(model):
    reply = model.chat(
        image(),
        modality="image",
        prompt="segment the red circle",
        stop_strings=None,
        **forced(model, "seg", 2),
    )
    assert len(reply.masks) == 2
    assert all(m.dtype == torch.bool and m.shape == (40, 48) for m in reply.masks)
    assert reply.images == []


class EmitAt:
    """A logits processor that makes row b emit `token` at the steps in `steps[b]`."""

    def __init__(self, token, steps):
        self.token, self.steps = token, steps

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1]
        for b, at in enumerate(self.steps):
            if t in at:
                scores[b] = float("-inf")
                scores[b, self.token] = 0
            else:
                scores[b, self.token] = float("-inf")
        return scores


@pytest.mark.parametrize("use_cache", [True, False])
def test_masks_from_generates_states_equal_masks_from_a_second_pass(model, monkeypatch, use_cache):
    """A left-padded batch of two: one <seg> mid-reply, one as the reply's last token (at
    max_new_tokens, a state generate never computed); a second full pass over prompt +
    reply, as chat once ran, gives the same states and masks."""
    seg = model.outputs.token_ids["seg"]
    seen = {}
    real = outputs.attach_outputs

    def spy(m, replies, out, prompt_embeds, attention_mask, samples):
        seen.update(out=out, embeds=prompt_embeds, mask=attention_mask)
        return real(m, replies, out, prompt_embeds, attention_mask, samples)

    monkeypatch.setattr(chat, "attach_outputs", spy)  # what generate calls
    images = [image(), image(32, 24)]
    force = LogitsProcessorList([EmitAt(seg, [{1}, {4}])])
    replies = model.chat(
        [images[0], images[1]],
        modality="image",
        prompt="segment it",
        max_new_tokens=5,
        logits_processor=force,
        stop_strings=None,
        eos_token_id=None,
        use_cache=use_cache,
    )
    assert [r.token_ids.count(seg) for r in replies] == [1, 1]
    out, mask = seen["out"], seen["mask"]
    ids = torch.cat([torch.zeros_like(mask), out.sequences], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(out.sequences)], dim=1)
    embeds = torch.cat([seen["embeds"], model.llm.get_input_embeddings()(out.sequences)], dim=1)
    with torch.no_grad():
        hidden = model.llm(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states[-1]
        want = outputs.generated_states(model, out, seen["embeds"], mask)
        ours = hidden[:, mask.shape[1] :]
        where = out.sequences == seg
        torch.testing.assert_close(want[where], ours[where], rtol=1e-4, atol=1e-5)
        pixels = [model.modalities["image"].pixels(x) for x in images]
        again = model.outputs.reply(ids, hidden, model.llm.get_input_embeddings()(ids), pixels)
    for reply, fields in zip(replies, again, strict=True):
        assert len(reply.masks) == 1
        assert torch.equal(reply.masks[0], fields["masks"][0])


def test_typed_seg_text_does_not_trigger_the_decoder(model):
    bad = [[i] for i in model.outputs.token_ids.values()]
    reply = model.chat(
        image(),
        modality="image",
        prompt="<seg> <seg> please",
        max_new_tokens=3,
        bad_words_ids=bad,
        stop_strings=None,
    )
    assert reply.masks == [] and reply.images == []


def test_a_group_of_gen_tokens_gives_one_image(model):
    reply = model.chat(
        None, prompt="draw a green square", stop_strings=None, **forced(model, "gen", 4)
    )
    assert len(reply.images) == 1 and reply.images[0].size == (16, 16)


def test_seg_states_reach_the_mask_decoder_with_gradients_to_the_output_experts(model):
    model.zero_grad(set_to_none=True)
    tok = model.text_tokenizer
    seg = model.outputs.token_ids["seg"]
    ids = torch.tensor([[tok.bos_token_id, 30, 40, seg, 50, seg]])
    hidden, embeds = last_hidden(model, ids)
    expert = model.outputs["seg"]
    prompts, where = expert.prompts(ids, hidden, embeds)
    assert prompts.shape == (2, 32) and where.tolist() == [0, 0]
    pixels = torch.rand(3, 40, 48)
    (logits,) = expert.mask_logits(prompts, where, [pixels])
    assert logits.shape == (2, 40, 48)
    mask_loss(logits, torch.rand(2, 40, 48) > 0.5).backward()
    assert all(p.grad is not None for p in expert.head.parameters())
    assert all(p.grad is None for p in expert.decoder.sam.image_encoder.parameters())
    assert all(p.grad is None for p in model.llm.parameters())  # frozen LLM
    model.zero_grad(set_to_none=True)


def test_a_model_with_outputs_saves_and_loads(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    back = OneLLM.from_pretrained(tmp_path / "m").eval()
    assert back.outputs.token_ids == model.outputs.token_ids
    sd_a, sd_b = model.outputs.state_dict(), back.outputs.state_dict()
    assert sd_a.keys() == sd_b.keys() and any(k.startswith("seg.head.") for k in sd_a)
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_a_seg_about_an_input_without_pixels_gives_no_mask_and_no_error(model):
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    reply = model.chat(
        wave, modality="audio", prompt="segment it", stop_strings=None, **forced(model, "seg", 1)
    )
    assert reply.masks == []


def test_seg_masks_of_a_batch_equal_those_of_each_image_alone(model):
    expert = model.outputs["seg"]
    images = [torch.rand(3, 40, 48), None, torch.rand(3, 40, 48)]
    prompts = torch.randn(3, expert.head.mix.experts[0][-1].out_features)
    where = torch.tensor([0, 2, 2])
    together = expert.mask_logits(prompts, where, images)
    alone = expert.mask_logits(prompts[1:], torch.tensor([0, 0]), images[2:])
    assert [m.shape for m in together] == [(1, 40, 48), (0, 0, 0), (2, 40, 48)]
    assert torch.allclose(together[2], alone[0], atol=1e-5)


def test_a_gen_head_whose_queries_do_not_match_the_text_encoder_is_a_clear_error():
    cfg = yaml.safe_load(TINY.read_text())
    cfg["outputs"]["gen"]["head"]["num_queries"] = 5
    model = OneLLM.from_config(cfg)
    sc_ids = model.text_tokenizer("### Human: draw a red circle\n### Assistant: " + "<gen>" * 4)
    ids = torch.tensor([sc_ids.input_ids])
    out = model.llm(input_ids=ids, output_hidden_states=True)
    targets = {"phrases": ["a red circle"], "images": torch.zeros(1, 3, 32, 32)}
    with pytest.raises(ConfigError, match="num_queries to 8"):
        model.outputs["gen"].loss(ids, out.hidden_states[-1], out.hidden_states[0], targets)
