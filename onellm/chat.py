"""`model.chat(...)`: raw inputs + prompt -> text, through transformers' `generate`.

inputs (raw | [raw, ...] | {modality: raw} | [{...}, ...])
  -> preprocess -> modality blocks (B_m, Q+2, D)
prompt + history -> template segments -> ids laid out as training lays them out
  (onellm/layout.py: placeholders expanded to Q+2 positions; batch left-padded)
  -> inputs_embeds (masked_scatter of the blocks) -> llm.generate (KV cache, sampling)
  -> text, cut at the template's stop strings; masks / images from the states generate
  computed at output tokens (onellm/outputs.py)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import TextIteratorStreamer

from onellm.errors import InputError
from onellm.layout import pad
from onellm.template import Segment, Turn, cut_at_stop, render_prompt, stream_visible

if TYPE_CHECKING:
    from onellm.model import OneLLM


@dataclass
class ChatResponse:
    """One reply: `.text`; `.masks` / `.images` when output experts produce them."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


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
    one = mod is not None and bool(getattr(mod, "is_sample", None)) and mod.is_sample(inputs)
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
    """The prompt's ids, laid out as a training row of the same conversation (onellm/layout.py)."""
    return model.layout.row(segments, given)[0]


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
    **generate_kwargs: Any,
) -> ChatResponse | list[ChatResponse] | Iterator[str]:
    """See `OneLLM.chat`."""
    tok = model.text_tokenizer
    if tok is None:
        raise InputError("text: this model has no tokenizer; set llm.tokenizer to a tokenizer dir")
    if prompt is not None and not prompt.strip():
        prompt = None
    if prompt is None and inputs is None:
        raise InputError("text: expected a prompt or an input, got an empty prompt and no input")
    samples, batched = normalise_inputs(model, inputs, modality)
    segments = render_prompt(model.config.chat, prompt, list(history or ()))
    prompts: dict[tuple[str, ...], list[int]] = {}  # samples with the same modalities share ids
    for s in samples:
        if tuple(s) not in prompts:
            prompts[tuple(s)] = prompt_ids(model, segments, list(s))
    rows = [(prompts[tuple(s)], prompts[tuple(s)]) for s in samples]
    blocks = {}
    for key in dict.fromkeys(k for s in samples for k in s):  # modalities in first-seen order
        batch = torch.cat([model.preprocess(s[key], key) for s in samples if key in s])
        blocks[key] = model.modality_block(batch, key)
    padded = pad(rows, tok.pad_token_id or 0, left=True)
    attention_mask = padded["attention_mask"].to(model.device)
    embeds = model.embed(padded["input_ids"].to(model.device), blocks)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        do_sample=temperature > 0,
    )
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    stops = list(model.config.chat.stop)
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tok)
    kwargs.update(generate_kwargs)
    if stream:
        if len(samples) > 1:
            raise InputError(f"inputs: streaming takes one input, got a batch of {len(samples)}")
        return _stream(model, embeds, attention_mask, kwargs, stops)
    read_states = len(model.outputs) > 0  # the output experts read generate's own states
    if read_states:
        kwargs.update(return_dict_in_generate=True, output_hidden_states=True)
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
    generated = out.sequences if read_states else out
    replies = [
        ChatResponse(
            text=cut_at_stop(tok.decode(row, skip_special_tokens=True), stops),
            token_ids=_trim(row, tok),
        )
        for row in generated.tolist()
    ]
    if read_states and model.outputs.emitted(generated):
        from onellm.outputs import attach_outputs

        attach_outputs(model, replies, out, embeds, attention_mask, samples)
    return replies if batched else replies[0]


def _trim(row: list[int], tok) -> list[int]:
    """Generated ids up to (not including) EOS / padding."""
    out = []
    for i in row:
        if i == tok.eos_token_id:
            break
        out.append(i)
    return out


def _stream(model: OneLLM, embeds, attention_mask, kwargs, stops) -> Iterator[str]:
    """Yield reply pieces as they are generated; their concatenation is the final `.text`."""
    streamer = TextIteratorStreamer(
        model.text_tokenizer, skip_prompt=True, skip_special_tokens=True
    )

    def run() -> None:
        with torch.no_grad():
            model.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, streamer=streamer, **kwargs
            )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text, sent = "", ""
    for piece in streamer:
        text += piece
        visible = stream_visible(text, stops)
        if len(visible) > len(sent):
            yield visible[len(sent) :]
            sent = visible
    thread.join()
    final = cut_at_stop(text, stops)
    if len(final) > len(sent):
        yield final[len(sent) :]
