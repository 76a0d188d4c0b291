"""The lmms-eval model `onellm` (lmms-eval's "simple" model type): `python -m lmms_eval --model
onellm --model_args pretrained=RUN[,device=cuda,dtype=bfloat16,batch_size=8] --tasks T`.

lmms-eval finds it through the entry-point group `lmms_eval.models` (pyproject.toml: the
manifest in onellm/lmms/__init__.py), so nothing in lmms-eval is edited. A request's
visuals become onellm inputs (onellm/lmms/inputs.py) and its context the user message;
requests sharing a task and generation options go through `model.chat` as the rows of one
batch. The chat model type (tasks' `doc_to_messages`) is onellm/lmms/chat_model.py.
"""

from __future__ import annotations

import tempfile
from typing import Any

from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from onellm.config import is_config
from onellm.errors import InputError
from onellm.inference.messages import one_turn
from onellm.lmms.inputs import Visuals
from onellm.lmms.requests import (
    batches,
    chat_options,
    continuation_logprob,
    cut,
    generation_key,
    until_of,
)
from onellm.model import OneLLM
from onellm.modeling.devices import DTYPES, resolve_device


class OneLLMEval(lmms):
    """onellm through lmms-eval: `generate_until`, `loglikelihood`,
    `generate_until_multi_round`. `model=` takes an already-loaded OneLLM (what `onellm eval
    --backend lmms-eval` passes) in place of `pretrained`."""

    is_simple = True
    # a request's args: (context, gen_kwargs, doc_to_visual, doc_id, task, split); the chat
    # type's put doc_to_messages second. The cache keys a reply by the args before `cached`.
    gen_arg, cached = 1, 2

    def __init__(
        self,
        pretrained: str | None = None,
        device: str = "auto",
        dtype: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int | str = 64,
        model: Any = None,
        max_batch_size: Any = None,  # lmms-eval passes its --max_batch_size to every model
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:  # a misspelt argument is refused, not dropped
            raise InputError(
                f"onellm: unknown model_args {', '.join(sorted(unknown))}; expected pretrained, "
                "device, dtype, batch_size, max_new_tokens"
            )
        if model is None:
            if not pretrained:
                raise InputError("onellm: expected model_args pretrained=RUN (a saved run dir)")
            model = load(str(pretrained), str(device or "auto"), dtype)
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, except that `--model_args` win over lmms-eval's own flags
        (`--batch_size` defaults to 1 and would clash with `batch_size=` in the args)."""
        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **args})

    @property
    def device(self):
        return self.model.device

    def doc(self, req: Instance) -> dict:
        *_, doc_id, task, split = req.args
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Each request's context about its visuals, batched through `model.chat`'s rows."""
        out: list[str] = [""] * len(requests)

        for idx in batches(
            requests, self.batch_size, lambda r: generation_key(r.args[self.gen_arg])
        ):
            first = requests[idx[0]]
            gen = first.args[self.gen_arg]
            with tempfile.TemporaryDirectory() as tmp:
                convs = [self.conversation(requests[i], tmp) for i in idx]
                replies = self.model.chat(messages=convs, **chat_options(gen, self.max_new_tokens))
            until = until_of(gen, first.task_name)
            for i, reply in zip(idx, replies, strict=True):
                out[i] = cut(reply.text, until)
                self.cache_hook.add_partial(
                    "generate_until", requests[i].args[: self.cached], out[i]
                )
        return out

    def conversation(self, req: Instance, folder: str) -> list[dict[str, Any]]:
        """A simple request (context, gen_kwargs, doc_to_visual, doc_id, task, split) -> one
        user message: its visuals, then its context (none: caption mode)."""
        context, _, doc_to_visual = req.args[:3]
        inputs = Visuals(self.model, req.task_name, folder).inputs(doc_to_visual(self.doc(req)))
        if not inputs and not context.strip():
            raise InputError(f"{req.task_name}: expected a context or a visual, got neither")
        return one_turn(inputs, context if context.strip() else None)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | visuals, context), whether greedy gives it) per request."""
        out = []
        for req in requests:
            context, continuation, *rest = req.args
            inputs: dict[str, Any] = {}
            with tempfile.TemporaryDirectory() as tmp:
                if rest:  # (context, continuation, doc_to_visual, doc_id, task, split)
                    doc = self.doc(req)
                    continuation = continuation(doc) if callable(continuation) else continuation
                    inputs = Visuals(self.model, req.task_name, tmp).inputs(rest[0](doc))
                if not isinstance(continuation, str):
                    raise InputError(
                        f"{req.task_name}: expected the continuation as a string, got "
                        f"{type(continuation).__name__}"
                    )
                out.append(continuation_logprob(self.model, inputs, context, continuation))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), out[-1])
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds until the task's doc_to_text says stop: (context, gen_kwargs, doc_to_visual,
        doc_to_text, doc_id, task, split). Each round is a user turn after the replies so far;
        -> each request's replies, one per round."""
        out = []
        for req in requests:
            context, gen, doc_to_visual, doc_to_text = req.args[:4]
            doc = self.doc(req)
            opts, until = chat_options(gen, self.max_new_tokens), until_of(gen, req.task_name)
            replies: list[str] = []
            info, visuals = None, doc_to_visual(doc)
            with tempfile.TemporaryDirectory() as tmp:
                read = Visuals(self.model, req.task_name, tmp)
                messages = one_turn(read.inputs(visuals), context)
                while True:
                    replies.append(cut(self.model.chat(messages=messages, **opts).text, until))
                    step = doc_to_text(
                        doc,
                        previous_output=replies,
                        round_idx=len(replies),
                        previous_round_info=info,
                    )
                    visuals, context, terminal, _, info = step
                    if terminal:
                        break
                    # one input per modality in a conversation: a round's visual of a
                    # modality already given is that input again
                    given = {p["type"] for m in messages[::2] for p in m["content"]}
                    new = {k: v for k, v in read.inputs(visuals).items() if k not in given}
                    messages += [{"role": "assistant", "content": replies[-1]}]
                    messages += one_turn(new, context)
            out.append(replies)
        return out


def load(pretrained: str, device: str, dtype: str | None) -> OneLLM:
    """A saved run (or a model YAML) on `device` in `dtype` (None: the config's)."""
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"onellm: expected dtype one of {', '.join(DTYPES)}, got {dtype!r}")
    where = resolve_device(device)
    if is_config(pretrained):
        return OneLLM.from_config(pretrained, device=where, dtype=dtype)
    return OneLLM.from_pretrained(pretrained, device=where, dtype=dtype)
