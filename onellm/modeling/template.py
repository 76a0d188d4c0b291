"""The conversation layout: one function (`conversation`) for inference and training, so both agree.

    caption mode (no prompt, no history):  [BOS] <m> caption </s>
    chat:  [BOS] <m> system sep  user q1 sep assistant a1 sep  ...  user qN sep assistant
Modality placeholders `<m>` go where the user typed them, else first (OneLLM's layout).
"""

from __future__ import annotations

from collections.abc import Sequence

from onellm.config import ChatConfig
from onellm.errors import InputError

Turn = tuple[str, str]


Segment = tuple[str, bool]  # a piece of text, and whether it is a training target


def conversation(chat: ChatConfig, turns: Sequence[tuple[str, str | None]]) -> list[Segment]:
    """The one layout of a conversation: each question (no target) and its answer (a
    target, `answer + separator`, as history replays it). An answer of None ends the text
    at `assistant`: the prompt the model continues."""
    segments: list[Segment] = []
    for i, (q, a) in enumerate(turns):
        lead = (chat.system + chat.separator if chat.system else "") if i == 0 else ""
        segments.append((lead + chat.user + q + chat.separator + chat.assistant, False))
        if a is not None:
            segments.append((a + chat.separator, True))
    return segments


def render_prompt(
    chat: ChatConfig, prompt: str | None, history: Sequence[Turn] = ()
) -> list[Segment]:
    """What the model continues: nothing for captioning, else the conversation up to `assistant`."""
    if prompt is None:
        if history:
            raise InputError("text: expected a prompt to follow the history, got none")
        return []
    return conversation(chat, [*history, (prompt, None)])


def render_training(
    chat: ChatConfig, turns: Sequence[Turn] | None, caption: str | None = None
) -> list[Segment]:
    """What a training row reads: `caption` alone (alignment), or the turns. EOS follows the
    last target and is a target too (the layout appends it)."""
    if caption is not None:
        return [(caption, True)]
    if not turns:
        raise InputError("text: expected a caption or at least one conversation turn, got neither")
    return conversation(chat, turns)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop string, stripped."""
    cuts = [i for s in stops if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)] if cuts else text).strip()


def stream_visible(text: str, stops: Sequence[str]) -> str:
    """The part of a partial reply that is certain to stay: no partial stop string, no
    trailing white space (either may turn out to be cut). A prefix of the final reply."""
    cuts = [i for s in stops if s and (i := text.find(s)) >= 0]
    if cuts:
        return text[: min(cuts)].strip()
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold].strip()
