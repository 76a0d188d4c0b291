"""A conversation against the model's context, checked before it costs anything.

Text is refused by its length in characters before it is tokenised: a 4 MiB prompt costs
~6 s and ~800 MB to tokenise, only to be refused. No token stands for more characters
than the longest entry of the vocabulary (a byte-level entry is as long as the bytes it
covers, so at least as long as their characters; a SentencePiece entry spells its text,
`▁` for the space), so text of more than `context * longest` characters cannot fit, and
nothing that could fit is refused. Then the tokenised prompt is checked exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from onellm.errors import InputError

if TYPE_CHECKING:
    from onellm.model import OneLLM

# tokenizer -> (vocabulary size, longest entry): the scan takes ~10 ms for 32k entries, so
# it is done once per tokenizer (and again if tokens are added), not per request
_LONGEST: WeakKeyDictionary = WeakKeyDictionary()


def context_of(model: OneLLM) -> int:
    """How many positions (prompt and reply) the model's LLM holds."""
    return model.llm.config.max_position_embeddings


def longest_token(tok) -> int:
    """The most characters one token of `tok` stands for."""
    size = len(tok)
    known = _LONGEST.get(tok)
    if known is None or known[0] != size:
        known = (size, max(len(t) for t in tok.get_vocab()))
        _LONGEST[tok] = known
    return known[1]


def check_chars(model: OneLLM, texts: Iterable[str], where: str = "messages") -> None:
    """Refuse text that cannot fit the context, by counting characters (no tokenising)."""
    chars = sum(len(t) for t in texts)
    context = context_of(model)
    bound = context * longest_token(model.text_tokenizer)
    if chars > bound:
        raise InputError(
            f"{where}: expected text the model's context of {context} tokens can hold (at "
            f"most {bound:,} characters), got {chars:,} characters"
        )


def check_fits(
    n: int, context: int, max_new_tokens: int | None = None, field: str = "max_tokens"
) -> None:
    """A prompt of `n` tokens (text and inputs) and `max_new_tokens` more within `context`."""
    if n > context:
        raise InputError(
            f"messages: the prompt has {n} tokens (its text and inputs) and the model's "
            f"context holds {context}; expected a shorter conversation"
        )
    if max_new_tokens is not None and n + max_new_tokens > context:
        raise InputError(
            f"{field}: the prompt has {n} tokens and the model's context holds {context}, "
            f"so expected at most {context - n}, got {max_new_tokens}"
        )
