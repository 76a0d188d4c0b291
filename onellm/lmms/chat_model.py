"""The `onellm` model as lmms-eval's chat model type (`is_simple = False`): the task's
`doc_to_messages` (lmms-eval builds them from doc_to_visual + doc_to_text where a task has
none) read as onellm's messages, so a task's system prompt and earlier turns reach the model.

lmms-eval 0.7 picks the chat class of a model that has both unless `--force_simple` is
given; its chat tasks generate only, so loglikelihood and multiple-choice tasks need
`--force_simple` (as for lmms-eval's own models that have both).
"""

from __future__ import annotations

import tempfile
from typing import Any

from lmms_eval.api.instance import Instance

from onellm.lmms.inputs import Visuals
from onellm.lmms.model import OneLLMEval
from onellm.lmms.requests import chat_options, cut, until_of


class OneLLMChat(OneLLMEval):
    """Requests (context, doc_to_messages, gen_kwargs, doc_id, task, split)."""

    is_simple = False
    gen_arg, cached = 2, 1  # (context, doc_to_messages, gen_kwargs, doc_id, task, split)

    def conversation(self, req: Instance, folder: str) -> list[dict[str, Any]]:
        """A chat request -> the task's messages, each visual read as onellm reads it."""
        doc_to_messages = req.args[1]
        return Visuals(self.model, req.task_name, folder).messages(doc_to_messages(self.doc(req)))

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Round 0 is doc_to_messages(doc); each later round, doc_to_messages(doc, round_idx,
        previous_output, previous_round_info) -> (its user turn, terminal, _, info), said
        after the replies so far."""
        out = []
        for req in requests:
            doc_to_messages, gen = req.args[1], req.args[2]
            doc = self.doc(req)
            opts, until = chat_options(gen, self.max_new_tokens), until_of(gen, req.task_name)
            replies: list[str] = []
            info = None
            with tempfile.TemporaryDirectory() as tmp:
                read = Visuals(self.model, req.task_name, tmp)
                messages = read.messages(doc_to_messages(doc))
                while True:
                    replies.append(cut(self.model.chat(messages=messages, **opts).text, until))
                    turn, terminal, _, info = doc_to_messages(
                        doc,
                        round_idx=len(replies),
                        previous_output=replies,
                        previous_round_info=info,
                    )
                    if terminal:
                        break
                    messages += [{"role": "assistant", "content": replies[-1]}]
                    messages += read.messages(turn)
            out.append(replies)
        return out
