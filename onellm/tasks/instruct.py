"""instruct: instruction tuning. 1-3 turns about the input (a description request and its
attribute questions), a `caption_mix` share kept as plain captions so captioning stays;
the loss is on the answers. Held out: the captions of its modality, as caption's, and
question answering (`evaluate_qa`: every question of held-out scenes, asked alone)."""

from __future__ import annotations

from onellm.training.task import register
from onellm.training.text_tasks import ConversationTask


class Instruct(ConversationTask):
    name = "instruct"
    length_grouped = True
    captions = questions = True
    metrics = ("exact_match", "bleu4", "cider")


register(Instruct())
