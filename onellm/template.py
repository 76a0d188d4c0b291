"""The conversation layout, one function each for inference and training, so both agree.

    caption mode (no prompt, no history):  [BOS] <m> caption </s>
    chat:  [BOS] <m> system sep  user q1 sep assistant a1 sep  ...  user qN sep assistant
Modality placeholders `<m>` go where the user typed them, else first (OneLLM's layout).
"""

from __future__ import annotations

from collections.abc import Sequence

from onellm.config import ChatConfig
from onellm.errors import InputError

Turn = tuple[str, str]


def render_prompt(chat: ChatConfig, prompt: str | None, history: Sequence[Turn] = ()) -> str:
    """The text the model continues: empty for captioning, else the template up to `assistant`."""
    if prompt is None:
        if history:
            raise InputError("text: expected a prompt to follow the history, got none")
        return ""
    head = chat.system + chat.separator if chat.system else ""
    done = "".join(
        chat.user + q + chat.separator + chat.assistant + a + chat.separator for q, a in history
    )
    return head + done + chat.user + prompt + chat.separator + chat.assistant


def render_training(
    chat: ChatConfig, turns: Sequence[Turn] | None, caption: str | None = None
) -> list[tuple[str, bool]]:
    """Text segments with a flag saying which are targets: `caption` alone (alignment), or turns.

    Each answer's target is `answer + separator` (as history replays it); EOS follows the
    last target and is a target too (the caller appends it).
    """
    if caption is not None:
        return [(caption, True)]
    if not turns:
        raise InputError("text: expected a caption or at least one conversation turn, got neither")
    segments: list[tuple[str, bool]] = []
    for i, (q, a) in enumerate(turns):
        lead = (chat.system + chat.separator if chat.system else "") if i == 0 else ""
        segments.append((lead + chat.user + q + chat.separator + chat.assistant, False))
        segments.append((a + chat.separator, True))
    return segments


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
