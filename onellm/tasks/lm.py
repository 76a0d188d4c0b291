"""lm: language pretraining of the tiny LLM (stage 0) on the shapes world's captions and
conversations, every token a target; a `context_mix` share first reads the caption's
words where the modality block will later stand. No held-out metric of its own: the
later stages' caption tables show what it gave."""

from __future__ import annotations

from onellm.training.task import register
from onellm.training.text_tasks import ConversationTask


class LanguageModelling(ConversationTask):
    name = "lm"
    text_only = True
    needs_input = to_llm = False  # text only, even where a source names the modality it describes
    length_grouped = True
    lm = True


register(LanguageModelling())
