"""Special tokens encode to one id each; typed look-alikes stay text (LISA#55)."""

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from onellm import OneLLM
from onellm.errors import ConfigError
from onellm.inference.chat import prompt_ids
from onellm.modeling.special_tokens import add_special_tokens, encode_prompt
from onellm.modeling.text_tokenizer import tiny_tokenizer
from tests.conftest import TINY


def tiny_llama(vocab):
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )


def test_seg_and_gen_encode_to_one_id_each_and_the_llm_grows_to_fit():
    tok = tiny_tokenizer(300)  # only 32 free ids above the BPE vocabulary
    llm = tiny_llama(len(tok))
    ids = add_special_tokens(tok, llm, ["<seg>", "<gen>"])
    for t, i in ids.items():
        assert tok(t, add_special_tokens=False).input_ids == [i]
        assert tok.decode([i]) == t
    assert llm.get_input_embeddings().num_embeddings > max(ids.values())
    assert llm.get_output_embeddings().weight.shape[0] == llm.get_input_embeddings().num_embeddings
    assert add_special_tokens(tok, llm, ["<seg>"]) == {"<seg>": ids["<seg>"]}  # idempotent
    # "segment <seg>" inside a sentence: still one id for the token
    sentence = tok("it is <seg> .", add_special_tokens=False).input_ids
    assert sentence.count(ids["<seg>"]) == 1


def test_a_token_that_cannot_be_one_id_is_refused():
    tok = tiny_tokenizer(300)
    # a byte-level BPE entry such as "Ġa" is in the vocabulary, but typing it gives other ids
    entry = next(t for t in tok.get_vocab() if t.startswith("Ġ") and len(t) > 1)
    with pytest.raises(ConfigError, match="expected one id"):
        add_special_tokens(tok, None, [entry])


def test_typed_special_tokens_are_plain_text_unless_kept():
    tok = tiny_tokenizer(512)
    ids = add_special_tokens(tok, None, ["<seg>", "<image>"])
    typed = encode_prompt(tok, "<image> please <seg> it", ["<image>"])
    assert ids["<image>"] in typed and ids["<seg>"] not in typed
    assert tok.decode(typed[2:]).strip().endswith("<seg> it")  # the text survives as text
    kept = encode_prompt(tok, "<image> please <seg> it", ["<image>", "<seg>"])
    assert ids["<seg>"] in kept


def test_chat_prompts_keep_placeholders_and_not_typed_special_tokens():
    model = OneLLM.from_config(TINY)
    tok = model.text_tokenizer
    seg = add_special_tokens(tok, model.llm, ["<seg>"])["<seg>"]
    ids = prompt_ids(model, [("segment the <seg> red <image> circle", False)], ["image"])
    assert seg not in ids
    assert ids.count(model.layout.placeholder_ids["image"]) == model.layout.block_len
    assert ids[0] == tok.bos_token_id
