"""The Gradio UI mounted at `/`: an upload slot per modality of the model (fill several for
one message), a multi-turn chat streamed as it is generated, a view per output kind of the
model (masks drawn over the input image, generated images in a gallery), and the
projection experts' routing for the last input.

Its requests go through the same queue as the API's, so UI and API users share batches,
and each turn is read as the API reads its messages (`model.chat(messages=...)`'s reader,
onellm/inference/messages.py): the turn's uploads as `onellm_input` parts naming their
files, read only inside Gradio's upload folder.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from onellm.errors import InputError
from onellm.inference.messages import read_messages
from onellm.modeling.modality import HasPixels, Paired, TakesUpload
from onellm.modeling.projection import Routed
from onellm.serve.batcher import Busy, Job
from onellm.serve.inputs import Uploads, prepare

if TYPE_CHECKING:
    from onellm.serve.api import Service

UPLOADS = Path(gr.utils.get_upload_folder()).resolve()

# the player for a modality that takes a common file (its `upload`); others get a file slot
PLAYERS = {
    "audio": lambda label: gr.Audio(type="filepath", sources=["upload"], label=label),
    "video": lambda label: gr.Video(sources=["upload"], label=label),
}


def image_slot(label: str, elem_id: str) -> gr.Image:
    return gr.Image(type="filepath", sources=["upload"], label=label, elem_id=elem_id)


def upload_slots(model) -> list[tuple[str, str | None, Any]]:
    """(modality key, part name or None, component) for each upload the model can take:
    two slots for a paired input (rgb and its `second` map: depth, normal), an image
    widget where a mask can be drawn on the input (`pixels`), the player of the file the
    modality takes (`upload`: audio, video), else a file."""
    slots = []
    for key, mod in model.modalities.items():
        with gr.Tab(key):
            if isinstance(mod, Paired):
                slots.append((key, "rgb", image_slot(f"{key}: rgb", f"input-{key}-rgb")))
                label, elem_id = f"{key}: {mod.second} map", f"input-{key}-{mod.second}"
                slots.append((key, mod.second, gr.File(label=label, elem_id=elem_id)))
            elif isinstance(mod, HasPixels):
                slots.append((key, None, image_slot(key, f"input-{key}")))
            else:
                player = PLAYERS.get(mod.upload) if isinstance(mod, TakesUpload) else None
                widget = player(key) if player else gr.File(label=key)
                widget.elem_id = f"input-{key}"
                slots.append((key, None, widget))
    return slots


def output_views(model) -> list[tuple[str, Any, Any]]:
    """(kind, output expert, component) for each output kind of the model: its results drawn
    over the input for a kind that draws on it (`on_input`: masks), else a gallery."""
    views = []
    for kind, expert in model.outputs.items():
        if expert.on_input:
            view = gr.AnnotatedImage(label=f"{expert.field} over the input", elem_id=expert.field)
        else:
            view = gr.Gallery(label=f"generated {expert.field}", elem_id=expert.field, height=200)
        views.append((kind, expert, view))
    return views


def shown(kind: str, expert, pixels, outputs: dict[str, list]) -> Any:
    """What an output view shows of a reply: the input with the items over it, or the items."""
    items = outputs.get(expert.field, [])
    if expert.on_input:
        return overlay(pixels, items, kind)
    return [expert.as_png(item) for item in items] or None


def gathered(slots, values) -> dict[str, Any]:
    """Upload values -> {modality key: raw} (a paired input only when both parts are given)."""
    raws: dict[str, Any] = {}
    for (key, part, _), value in zip(slots, values, strict=True):
        if value is None:
            continue
        path = value if isinstance(value, str) else getattr(value, "name", value)
        if part is None:
            raws[key] = path
        else:
            raws.setdefault(key, {})[part] = path
    for key in {k for k, p, _ in slots if p is not None} & set(raws):
        if len(raws[key]) < 2:
            raise InputError(f"{key}: expected both the rgb image and its map, got one")
    return raws


def text_of(content: Any) -> str:
    """A chat message's text: Gradio 6 gives content as a list of parts (`{"type": "text",
    "text": ...}`, files, components); a plain string is kept as it is. Parts other than
    text are the inputs' slots' business, not the history's."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return ""
    texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(t for t in texts if isinstance(t, str))


def turns(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The chatbot's messages -> (user, assistant) pairs."""
    out, user = [], None
    for m in chat:
        content = text_of(m.get("content"))
        if m.get("role") == "user":
            user = content
        elif user is not None:
            out.append((user, content))
            user = None
    return out


def as_messages(
    earlier: Sequence[tuple[str, str]], text: str, raws: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A UI turn in the message format: the earlier turns' text, then a user message with
    an `onellm_input` part per upload (a pair as its `parts`) and the typed text."""
    messages: list[dict[str, Any]] = []
    for user, assistant in earlier:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    parts: list[dict[str, Any]] = []
    for key, raw in raws.items():
        spec = (
            {"parts": {n: {"path": p} for n, p in raw.items()}}
            if isinstance(raw, dict)
            else {"path": raw}
        )
        parts.append({"type": "onellm_input", "onellm_input": {"modality": key, **spec}})
    if text:
        parts.append({"type": "text", "text": text})
    return [*messages, {"role": "user", "content": parts}]


def overlay(pixels, masks, kind: str) -> tuple[np.ndarray, list] | None:
    """The input image (H, W, 3) uint8 and each mask labelled by its kind's token
    (`<seg> 1`), for `gr.AnnotatedImage`."""
    if pixels is None or not masks:
        return None
    image = (pixels.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    return image, [
        (m.cpu().numpy().astype(float), f"<{kind}> {i + 1}") for i, m in enumerate(masks)
    ]


def routing_figure(model, inputs) -> Any:
    """Mean routing weight of each projection expert, per modality of the last input."""
    import matplotlib  # heavy: loaded when the first figure is drawn

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # after use("Agg"): no display needed

    fig, ax = plt.subplots(figsize=(5, 2.4))
    routed = {k: x for k, x in inputs.items() if isinstance(model.projector(k), Routed)}
    if not routed:  # a perceiver or MLP projection has no experts to show
        ax.text(0.5, 0.5, "no routed projection for this input", ha="center", va="center")
        ax.set_axis_off()
        plt.close(fig)
        return fig
    inputs, k = routed, model.projection.num_experts
    width = 0.8 / max(1, len(inputs))
    for j, (key, x) in enumerate(inputs.items()):
        weights = model.routing_report(key, x)["per_expert"]
        ax.bar(np.arange(k) + j * width, weights, width, label=key)
    ax.set_xticks(np.arange(k) + width * (len(inputs) - 1) / 2, [f"expert {i}" for i in range(k)])
    ax.set_ylabel("mean weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def build_ui(service: Service) -> gr.Blocks:
    model = service.model
    # no telemetry: the server talks to its clients and nothing else
    with gr.Blocks(title=f"onellm · {service.model_id}", analytics_enabled=False) as ui:
        gr.Markdown(
            f"### onellm · `{service.model_id}`  \nUpload inputs (several modalities "
            "may go in one message), then ask. The API is at `/v1/chat/completions`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                slots = upload_slots(model)
                with gr.Row():
                    max_tokens = gr.Slider(
                        1, min(512, service.context), value=64, step=1, label="max tokens"
                    )
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature")
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="conversation", height=320, elem_id="chat")
                # the history lives on the server (per browser session): the chatbot only
                # shows it, so no client sends a history for Gradio to unpack (its chat
                # messages may name files and components for the server to build)
                kept = gr.State([])
                message = gr.Textbox(
                    label="message", placeholder="Ask about the inputs", elem_id="prompt"
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Row():
                    views = output_views(model)
                routing = gr.Plot(label="routing: experts for the last input", elem_id="routing")

        def respond(text, history, n, temp, *values) -> Iterator[tuple]:
            history = list(history or [])
            uploads = Uploads(UPLOADS)  # Gradio's upload folder: the UI reads nothing else
            try:
                raws = gathered(slots, values)
                messages = as_messages(turns(history), text or "", raws)
                d = read_messages(model, messages, uploads)
                prepared = prepare(
                    model,
                    d.inputs,
                    d.prompt,
                    d.history,
                    context=service.context,
                    max_tokens=int(n),
                )
                events: queue.Queue = queue.Queue()
                job = Job(
                    prepared.conversation,
                    int(n),
                    stream=True,
                    temperature=float(temp),
                    emit=lambda kind, value: events.put((kind, value)),
                )
                service.batcher.submit(job)
            except (InputError, Busy) as e:
                raise gr.Error(uploads.hide(str(e))) from e
            finally:
                uploads.close()
            history += [
                {"role": "user", "content": text or "(caption the input)"},
                {"role": "assistant", "content": ""},
            ]
            skip = gr.skip()
            try:  # a page that leaves closes this generator: its row stops at the next token
                while True:
                    kind, value = events.get()
                    if kind == "text":
                        piece = history[-1]["content"] + value
                        history[-1] = {"role": "assistant", "content": piece}
                        yield history, skip, "", *[skip] * len(views), skip
                    elif kind == "error":
                        raise gr.Error(f"generation failed: {value}")
                    else:
                        break
            finally:
                job.cancelled.set()  # after "done" it changes nothing
            history[-1] = {"role": "assistant", "content": value.text}
            conv = prepared.conversation
            figure = routing_figure(model, conv.inputs) if conv.inputs else None
            made = [shown(kind, expert, conv.pixels, value.outputs) for kind, expert, _ in views]
            yield history, history, "", *made, figure

        shows = [view for _, _, view in views]
        outputs = [chat, kept, message, *shows, routing]
        inputs = [message, kept, max_tokens, temperature, *(w for _, _, w in slots)]
        send.click(respond, inputs, outputs)
        message.submit(respond, inputs, outputs)
        clear.click(
            lambda: ([], [], *[None] * len(shows), None), None, [chat, kept, *shows, routing]
        )
    return ui
