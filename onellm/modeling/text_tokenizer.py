"""The tiny text tokenizer: byte-level BPE trained (deterministically, in milliseconds) on
the shapes world's language, so the tiny model needs no download. Any text still encodes
(bytes are the base alphabet); shapes-world words are single tokens."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from onellm.data.language import corpus

SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as LLaMA's
RESERVED = 32  # ids left free above the BPE vocabulary for added tokens (placeholders, <seg>, ...)


def tiny_tokenizer(
    vocab_size: int, template_strings: tuple[str, ...] = (), captions: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` with at most `vocab_size - RESERVED` BPE entries, trained
    on `captions` (the model's modalities' and output tasks'), questions and templates."""
    if vocab_size - RESERVED < 256 + len(SPECIALS):
        raise ValueError(
            f"tiny tokenizer: vocab_size must be >= {256 + len(SPECIALS) + RESERVED}, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - RESERVED,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(captions, template_strings) * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
