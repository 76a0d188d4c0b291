"""Words a stage's captions use that the LLM has never said, found before training.

A modality's own parts (`trainable: ["@added"]`: its tokenizer, queries, projections) steer
the LLM only through the tokens they put in its sequence; the LLM still chooses every word
from what it learned to say. The demo's tiny LLM learned the shapes world's language in
stage 0, so "a slow irregular heartbeat" is out of its reach: "heartbeat" is six pieces
(' he' 'ar' 't' 'be' 'a' 't') it was never trained to emit there, and a stage that trains
only the new parts ends at 0% (the ecg example). Training the LLM's LoRA too learns them.

Measured with the LLM itself, not with a list of what stage 0 read, so the same check
holds for a real LLM: each vocabulary token's highest next-token probability anywhere in a
set of contexts (the model's modalities' captions and the shapes world's questions: the
language the tiny LLM learned; and the stage's own captions, where a pretrained LLM would
expect "heartbeat"), each read from <s>. A token the LLM was trained to emit reaches
PRODUCED somewhere; one it never saw stays far below (docs/adding-a-modality.md has the
measurement). A word is unsaid when one of its pieces is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from onellm.data.language import QUESTIONS
from onellm.data.sources import Source
from onellm.errors import InputError
from onellm.modeling.build import shapes_captions
from onellm.modeling.modality import Renders
from onellm.training.text_tasks import TextTask

PRODUCED = 1e-3  # a token's highest probability at or above this: the LLM says it
LIMIT = 256  # captions read from a manifest or shards (the first ones)
BATCH = 32  # contexts per forward pass


def source_captions(model: Any, source: Source, limit: int = LIMIT) -> list[str]:
    """The texts a source trains the LLM to say: every caption its synthetic modalities'
    renderers give (`captions()`), else the first `limit` records' captions and answers."""
    if source.records is None:
        mods = [model.modalities[m] for m in (source.modality, *source.more)]
        return [c for m in mods if isinstance(m, Renders) for c in m.captions()]
    texts = []
    for i in range(min(limit, source.size)):
        try:
            r = source.records[i]
        except InputError:  # a bad record is the data loader's to report, with its line
            continue
        texts += [r.caption] if r.caption else [a for _, a in r.turns]
    return list(dict.fromkeys(texts))


@torch.no_grad()
def highest_probabilities(model: Any, texts: Iterable[str]) -> torch.Tensor:
    """(V,): each token's highest next-token probability over every position of `texts`,
    each read by the LLM from <s> (text only, no modality block)."""
    tok, llm = model.text_tokenizer, model.llm
    texts = list(dict.fromkeys(texts))
    best, was = None, llm.training
    llm.eval()  # no LoRA dropout
    for i in range(0, len(texts), BATCH):
        rows = [tok(t)["input_ids"] for t in texts[i : i + BATCH]]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
        logits = llm(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        p = logits.float().softmax(-1) * mask.to(logits.device)[..., None]
        top = p.amax(dim=(0, 1)).cpu()
        best = top if best is None else torch.maximum(best, top)
    llm.train(was)
    return best if best is not None else torch.zeros(0)


def word_pieces(tokenizer: Any, caption: str) -> list[tuple[str, list[int]]]:
    """The caption's words, each with the token ids the tokenizer splits it into there."""
    enc = tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for m in re.finditer(r"\S+", caption)]
    words: list[tuple[str, list[int]]] = [(caption[a:b], []) for a, b in spans]
    for t, (_, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        # a piece belongs to the word its last character is in (byte-level BPE's pieces
        # carry the space before a word); a piece of spaces alone belongs to none
        k = next((k for k, (a, b) in enumerate(spans) if a < end <= b), None)
        if k is not None:
            words[k][1].append(t)
    return words


def unsaid_words(
    model: Any, captions: list[str], contexts: Iterable[str] = (), best: torch.Tensor | None = None
) -> dict:
    """Which words of `captions` the LLM has never said: {words, unsaid, pieces}
    (`pieces`: each unsaid word as the tokenizer splits it, and each piece's highest
    probability; `best`: `highest_probabilities` over contexts and captions, if known)."""
    tok = model.text_tokenizer
    if best is None:
        best = highest_probabilities(model, [*contexts, *captions])
    words: dict[str, list[int]] = {}
    for c in captions:
        for w, ids in word_pieces(tok, c):
            words.setdefault(w, ids)
    unsaid = {w: ids for w, ids in words.items() if any(best[i] < PRODUCED for i in ids)}
    return {
        "words": len(words),
        "unsaid": list(unsaid),
        "pieces": {
            w: [[tok.decode([i]), round(float(best[i]), 6)] for i in ids]
            for w, ids in unsaid.items()
        },
    }


def trains_llm(model: Any) -> bool:
    """Whether any LLM parameter (its LoRA or its own) trains in this stage."""
    return any(p.requires_grad for p in model.llm.parameters())


def check(model: Any, sources: Mapping[str, Source]) -> dict[str, dict]:
    """Before training: for each source whose task trains the LLM to say its captions, the
    words the LLM has never said, and what to do. -> {modality: {words, unsaid, pieces,
    llm_trains, warning}} (`warning`: None when nothing is unsaid or the LLM trains)."""
    if model.text_tokenizer is None:  # token ids only: no words to check
        return {}
    said: dict[str, list[str]] = {}  # modality -> the captions its sources train it to say
    for s in sources.values():
        task = s.task
        if isinstance(task, TextTask) and not (task.lm or task.output) and s.modality:
            said.setdefault(s.modality, []).extend(source_captions(model, s))
    if not any(said.values()):  # e.g. stage 0: language modelling and CLIP
        return {}
    contexts = [*shapes_captions(model.modalities.values()), *QUESTIONS]
    best = highest_probabilities(model, [*contexts, *(c for cs in said.values() for c in cs)])
    llm_trains = trains_llm(model)
    out: dict[str, dict] = {}
    for modality, captions in said.items():
        if not captions:
            continue
        found = unsaid_words(model, list(dict.fromkeys(captions)), best=best)
        found["llm_trains"] = llm_trains
        found["warning"] = None if llm_trains else warning(modality, found)
        out[modality] = found
    return out


def _shown(found: dict) -> str:
    unsaid = found["unsaid"]
    shown = ", ".join(
        f"'{w}' ({' + '.join(repr(p) for p, _ in found['pieces'][w])})" for w in unsaid[:4]
    )
    more = f" and {len(unsaid) - 4} more" if len(unsaid) > 4 else ""
    return f"{len(unsaid)} of {found['words']} caption words were never produced by the LLM: {shown}{more}"


def warning(modality: str, found: dict) -> str | None:
    """What a person reads at the start of a stage whose LLM is frozen, or None."""
    if not found["unsaid"]:
        return None
    return (
        f"{modality}: {_shown(found)}. With the LLM frozen it cannot learn to say them; train "
        "its LoRA too: trainable: ['@added', 'llm.*lora_*'] (and lora: {r: 8, alpha: 16} "
        "when the model has none), which moves the other modalities' outputs a little "
        "(docs/adding-a-modality.md)"
    )


def announce(found: Mapping[str, dict], files: Any, stage: str, *, quiet: bool = False) -> None:
    """Each modality's check into the run's metrics (`{"event": "vocabulary", "modality",
    "reason", ...}`: the summary gives `reason` when the modality stays under its floor;
    None where the LLM trains, as the words are then learnable), and its warning printed."""
    for modality, f in found.items():
        files.log({"event": "vocabulary", "modality": modality, **f, "reason": f["warning"]})
        if f["warning"] and not quiet:
            print(f"[{stage}] warning: {f['warning']}")
