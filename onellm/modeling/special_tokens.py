"""Special tokens (`<seg>`, `<gen>`, modality placeholders): one id each, and typed text
that merely looks like one stays plain text.

LISA#55: its `[SEG]` tokenised into two pieces, so the hidden state its mask decoder read
was the wrong one. Here every special token is checked to encode to exactly one id, and
a user's prompt is tokenised with `split_special_tokens=True` except for the placeholders
the library itself put there, so typing "<seg>" never triggers a decoder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from onellm.errors import ConfigError


def add_special_tokens(
    tokenizer: PreTrainedTokenizerBase, llm: PreTrainedModel | None, tokens: Iterable[str]
) -> dict[str, int]:
    """Add `tokens` as special tokens (once), grow the LLM's embeddings if an id falls
    outside them, and check each encodes to exactly one id. -> {token: id}."""
    tokens = list(tokens)
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    for t, i in ids.items():
        got = tokenizer(t, add_special_tokens=False).input_ids
        if got != [i]:
            raise ConfigError(f"special token {t!r}: expected one id, the tokenizer gives {got}")
    if llm is not None and ids and max(ids.values()) >= llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ids


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, keep: Iterable[str], *, bos: bool = True
) -> list[int]:
    """Token ids of `text`, where only the strings in `keep` (the placeholders the library
    wrote) become special ids; anything else that looks like a special token is text."""
    keep = sorted(set(keep), key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, keep)) + ")", text) if keep else [text]
    ids: list[int] = []
    if bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    for piece in pieces:
        if piece in keep:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=True).input_ids
    return ids
