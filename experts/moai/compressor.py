"""What MoAI's mixer reads of the auxiliary text (experts/moai/mixer.py): its tokens.

    compressor: perceiver  MoAI's: the text's word embeddings (+ learned positions), then
                           `queries` latents attend over them (a perceiver): N tokens out of
                           however many words the sources said
    compressor: regions    one token per region the sources name (auxiliary.describe's
                           "red circle, top left", between ";" and "|"): its words read
                           alone and mean-pooled (+ a learned position per region)

Why `regions`: a region's colour, shape and place arrive in one vector, so a question's
"red circle" finds its "top left" with one cross-attention. The perceiver's latents all
start alike and attend alike: each became a bag of every region's words, which keeps what
is there (existence, count) and loses which place goes with which shape (docs/moai.md:
the study's mixer read position at 29.5% through MoAI's perceiver over the words, 62.5%
through regions; 400 steps of step 1 alone, a perceiver over the region tokens 29%, the
region tokens themselves 47%).
`aux_states: k` (either): the frozen LLM's states after decoder layer k rather than the
bare embeddings. With `regions`, `max_aux_tokens` caps the regions, `REGION_TOKENS` each
region's words; a region's tokens are pooled as the tokenizer gives them (with its BOS).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

COMPRESSORS = ("perceiver", "regions")
REGION_SEPARATORS = re.compile(r"[;|\n]")  # auxiliary.describe's between regions and sources
REGION_TOKENS = 64  # the words of one region read at most ("red circle, top left": ~6)


@torch.no_grad()
def llm_states(model: Any, ids: torch.Tensor, valid: torch.Tensor, layer: int) -> torch.Tensor:
    """The LLM's states after decoder layer `layer` over the aux text (the LLM reads here,
    it does not learn: no gradient; no mixing context is open, so no mixer runs)."""
    out = model.llm(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True)
    return out.hidden_states[layer + 1]


def word_tokens(
    model: Any, texts: Sequence[str], max_tokens: int, states: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> each token's word embedding (or the LLM's state after layer `states`),
    (B, L, D), and which are real (B, L)."""
    enc = model.text_tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    ids = enc["input_ids"].to(model.device)
    valid = enc["attention_mask"].bool().to(model.device)
    if states is None:
        return model.llm.get_input_embeddings()(ids), valid
    return llm_states(model, ids, valid, states), valid


def region_tokens(
    model: Any, texts: Sequence[str], max_regions: int, states: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> one token per region (its words read alone, mean-pooled), (B, R, D), and
    which exist (B, R): a text with no regions has none (the mixer then adds nothing)."""
    split = [[r for r in REGION_SEPARATORS.split(t) if r.strip()][:max_regions] for t in texts]
    counts = [len(s) for s in split]
    table = model.llm.get_input_embeddings().weight
    shape = (len(texts), max(max(counts, default=0), 1), table.shape[1])
    out = torch.zeros(shape, dtype=table.dtype, device=table.device)
    valid = torch.zeros(shape[:2], dtype=torch.bool, device=table.device)
    flat = [r.strip() for s in split for r in s]
    if not flat:
        return out, valid
    words, real = word_tokens(model, flat, max_tokens=REGION_TOKENS, states=states)
    weight = real[..., None].float()  # the mean in float32, whatever the model's dtype
    pooled = ((words.float() * weight).sum(1) / weight.sum(1).clamp_min(1)).to(out.dtype)
    for b, part in enumerate(pooled.split(counts)):
        out[b, : len(part)], valid[b, : len(part)] = part, True
    return out, valid
