"""`model.chat(...)`: raw inputs + prompt -> text, through transformers' `generate`.

inputs (raw | [raw, ...] | {modality: raw} | [{...}, ...]) + prompt, history, system
  or messages (OpenAI's, with typed content parts: onellm/inference/messages.py)
  -> a `Dialogue` per sample -> preprocess -> one `Conversation` per sample (inputs, prompt segments, own limit)
  -> `generate`: modality blocks (B_m, Q+2, D); ids laid out as training lays them out
  (onellm/modeling/layout.py: placeholders expanded to Q+2 positions; batch left-padded)
  -> inputs_embeds (masked_scatter of the blocks) -> llm.generate (KV cache, sampling)
  -> text, cut at the template's stop strings (streamed: onellm/inference/streaming.py);
  masks / images from the states generate computed at output tokens (output_states.py)
`generate` also serves `onellm serve`'s batches: each row has its own prompt, history,
inputs and token limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import StoppingCriteriaList

from onellm.errors import InputError
from onellm.inference.context import check_fits, context_of
from onellm.inference.media import Media
from onellm.inference.messages import Dialogue, check_dialogue, conversations, read_messages
from onellm.inference.output_states import attach_outputs
from onellm.inference.reply import ChatResponse
from onellm.inference.stopping import Cancelled, RowLimits
from onellm.inference.streaming import ChatStream, RowStreamer
from onellm.modeling.layout import pad
from onellm.modeling.modality import HasPixels, SampleLists
from onellm.modeling.template import Segment, Turn, cut_at_stop, render_prompt

if TYPE_CHECKING:
    from onellm.model import OneLLM


@dataclass
class Conversation:
    """One row of a `generate` batch: its preprocessed inputs, its prompt, its own limit."""

    inputs: dict[str, torch.Tensor]  # modality key -> (1, *input_shape), as model.preprocess
    segments: list[Segment]  # the prompt (onellm/modeling/template.py render_prompt)
    pixels: torch.Tensor | None = None  # (3, H, W) in [0, 1]: what a <seg> mask is drawn on
    max_new_tokens: int | None = None  # None: the batch's
    streamed: bool = True  # whether generate's `on_text` hears of this row
    # true once nobody waits for this row (a client that left): it stops at its next token
    cancelled: Callable[[], bool] | None = None


def normalise_inputs(
    model: OneLLM, inputs: Any, modality: str | None
) -> tuple[list[dict[str, Any]], bool]:
    """-> one {modality key: raw} dict per sample, and whether the caller passed a batch."""
    if inputs is None:
        if modality is not None:
            raise InputError(f"{modality}: a modality was named but no input was given")
        return [{}], False
    mod = model.modalities[model.modality_key(modality)] if modality is not None else None
    # a list is a batch, unless the modality reads it as one input (audio: a waveform)
    one = isinstance(mod, SampleLists) and mod.is_sample(inputs)
    batched = isinstance(inputs, list) and not one
    samples = inputs if batched else [inputs]
    if batched and not samples:
        raise InputError("inputs: expected at least one input in the list, got an empty list")
    out = []
    for raw in samples:
        # a dict names modalities, unless modality= is given and its keys are not all
        # modalities (depth's {"rgb": ..., "depth": ...} is one raw input)
        if isinstance(raw, Mapping) and (modality is None or set(raw) <= set(model.names)):
            if modality is not None:
                raise InputError("inputs: a dict names its modalities; drop modality=")
            out.append({model.modality_key(m): v for m, v in raw.items()})
        else:
            if modality is None:
                raise InputError(
                    "inputs: expected modality=... with a single input (or a dict {modality: input})"
                )
            out.append({model.modality_key(modality): raw})
    return out, batched


def prompt_ids(model: OneLLM, segments: Sequence[Segment], given: Sequence[str]) -> list[int]:
    """The prompt's ids, laid out as a training row of the same conversation (onellm/modeling/layout.py)."""
    return model.layout.row(segments, given)[0]


def pixels_of(model: OneLLM, sample: Mapping[str, Any]) -> torch.Tensor | None:
    """The sample's first input that can carry a mask (a modality with `pixels`)."""
    for key, raw in sample.items():
        mod = model.modalities[key]
        if isinstance(mod, HasPixels):
            return mod.pixels(raw).to(model.device, model.dtype)
    return None


@torch.no_grad()
def chat(
    model: OneLLM,
    inputs: Any = None,
    modality: str | None = None,
    prompt: str | None = None,
    history: Sequence[Turn] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream: bool = False,
    *,
    messages: Any = None,
    system: str | None = None,
    **generate_kwargs: Any,
) -> ChatResponse | list[ChatResponse] | ChatStream:
    """Answer `prompt` about `inputs` (greedy unless `temperature` > 0): `model.chat(...)`.

    `inputs`: a raw input of `modality` (path, PIL, array, tensor), a list of them (a
    batch: returns a list), a dict `{modality: raw}` for several modalities in one
    prompt (placed at their `<m>` placeholders, else first), or None for text only.
    No prompt: the model captions its input. `history`: earlier (prompt, reply) turns;
    `system`: a system prompt in place of the config's.
    Or `messages`: the conversation as OpenAI's chat messages with typed content parts,
    as `onellm serve` takes them (onellm/inference/messages.py), in place of all of
    these; a list of conversations is a batch.
    `max_new_tokens`, `temperature`, `top_p`, `stream=True` (an iterator of text
    pieces); other keyword arguments go to transformers' `generate`.
    """
    if model.text_tokenizer is None:
        raise InputError("text: this model has no tokenizer; set llm.tokenizer to a tokenizer dir")
    if messages is not None:
        given = dict(
            inputs=inputs, modality=modality, prompt=prompt, history=history, system=system
        )
        if named := [n for n, v in given.items() if v is not None]:
            raise InputError(f"messages: expected messages alone, got {', '.join(named)} too")
        convs, batched = conversations(messages)
        with Media() as media:  # its temporary files last until the inputs are read
            names = [f"messages[{k}]" if batched else "messages" for k in range(len(convs))]
            read = [read_messages(model, c, media, n) for c, n in zip(convs, names, strict=True)]
            rows = [conversation_of(model, d) for d in read]
    else:
        if prompt is not None and not prompt.strip():
            prompt = None
        if prompt is None and inputs is None:
            raise InputError(
                "text: expected a prompt or an input, got an empty prompt and no input"
            )
        check_dialogue(model, Dialogue({}, prompt, list(history or ()), system))
        samples, batched = normalise_inputs(model, inputs, modality)
        turns = list(history or ())
        rows = [conversation_of(model, Dialogue(s, prompt, turns, system)) for s in samples]
    if stream and len(rows) > 1:
        raise InputError(f"inputs: streaming takes one input, got a batch of {len(rows)}")
    opts = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    if stream:
        out = ChatStream(
            lambda on_text: generate(model, rows, on_text=on_text, **opts, **generate_kwargs)[0]
        )
        rows[0].cancelled = out.left.is_set
        return out
    replies = generate(model, rows, **opts, **generate_kwargs)
    return replies if batched else replies[0]


def segments_of(model: OneLLM, d: Dialogue) -> list[Segment]:
    """The dialogue's prompt laid out (its system message in place of the config's)."""
    cfg = model.config.chat
    if d.system is not None:
        cfg = dataclasses.replace(cfg, system=d.system)
    return render_prompt(cfg, d.prompt, d.history)


def conversation_of(model: OneLLM, d: Dialogue) -> Conversation:
    """A read dialogue -> its `generate` row: the prompt laid out, the inputs preprocessed."""
    inputs = {key: model.preprocess(raw, key) for key, raw in d.inputs.items()}
    return Conversation(inputs, segments_of(model, d), pixels_of(model, d.inputs))


@torch.no_grad()
def generate(
    model: OneLLM,
    rows: Sequence[Conversation],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_text: Callable[[int, str], None] | None = None,
    **generate_kwargs: Any,
) -> list[ChatResponse]:
    """One `generate` call over `rows` (left-padded), each with its own prompt, inputs and
    limit (a row stops at its `max_new_tokens`; the call at the longest). `on_text(i, piece)`
    gets row i's text as it becomes certain; the pieces join to its final `.text`."""
    tok = model.text_tokenizer
    limits = [r.max_new_tokens or max_new_tokens for r in rows]
    ids = [prompt_ids(model, r.segments, list(r.inputs)) for r in rows]
    for i in ids:  # RoPE would run past the trained positions; refuse it instead
        check_fits(len(i), context_of(model))
    blocks = {}
    for key in dict.fromkeys(k for r in rows for k in r.inputs):  # first-seen order
        blocks[key] = _blocks(model, [r.inputs[key] for r in rows if key in r.inputs], key)
    padded = pad([(i, i) for i in ids], tok.pad_token_id or 0, left=True)
    attention_mask = padded["attention_mask"].to(model.device)
    embeds = model.embed(padded["input_ids"].to(model.device), blocks)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max(limits),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        do_sample=temperature > 0,
    )
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    stops = list(model.config.chat.stop)
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tok)
    criteria = StoppingCriteriaList(generate_kwargs.pop("stopping_criteria", None) or [])
    if len(set(limits)) > 1:
        criteria.append(RowLimits(limits))
    if any(r.cancelled is not None for r in rows):
        criteria.append(Cancelled([r.cancelled for r in rows]))
    if criteria:
        kwargs["stopping_criteria"] = criteria
    if on_text is not None and any(r.streamed for r in rows):
        follow = [r.streamed for r in rows]
        cancelled = [r.cancelled for r in rows]
        kwargs["streamer"] = RowStreamer(tok, stops, limits, on_text, follow, cancelled)
    kwargs.update(generate_kwargs)
    read_states = len(model.outputs) > 0  # the output experts read generate's own states
    if read_states:
        kwargs.update(return_dict_in_generate=True, output_hidden_states=True)
    # a MoAI mixer hears what its auxiliary sources say about each row's image
    aux = None if model.moai is None else model.moai.describe(model, [r.pixels for r in rows])
    with model.mixing(padded["input_ids"].to(model.device), aux, attention_mask):
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        generated = out.sequences if read_states else out
        replies = []
        for row, limit in zip(generated.tolist(), limits, strict=True):
            row = row[:limit]
            replies.append(
                ChatResponse(
                    text=cut_at_stop(tok.decode(row, skip_special_tokens=True), stops),
                    token_ids=_trim(row, tok),
                )
            )
        if read_states and model.outputs.emitted(generated):
            attach_outputs(model, replies, out, embeds, attention_mask, [r.pixels for r in rows])
    return replies


def _blocks(model: OneLLM, xs: list[torch.Tensor], key: str) -> torch.Tensor:
    """The modality blocks (N, Q+2, D) of inputs `xs` in order; inputs of one shape share an
    encoder pass (videos of other lengths go apart)."""
    out: list[torch.Tensor | None] = [None] * len(xs)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for idx in by_shape.values():
        block = model.modality_block(torch.cat([xs[i] for i in idx]), key)
        for j, i in enumerate(idx):
            out[i] = block[j : j + 1]
    return torch.cat(out)  # type: ignore[arg-type]


def _trim(row: list[int], tok) -> list[int]:
    """Generated ids up to (not including) EOS, without the padding of a row that stopped."""
    out = []
    for i in row:
        if i == tok.eos_token_id:
            break
        out.append(i)
    while out and tok.pad_token_id is not None and out[-1] == tok.pad_token_id:
        out.pop()
    return out
