"""caption: the alignment stages' task. [BOS] modality block, caption </s>; the loss is on
the caption. Held out: exact match, BLEU-4 and CIDEr of greedy captions per modality."""

from __future__ import annotations

from onellm.training.task import register
from onellm.training.text_tasks import TextTask


class Caption(TextTask):
    name = "caption"
    captions = True
    metrics = ("exact_match", "bleu4", "cider")


register(Caption())
