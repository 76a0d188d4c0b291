"""The Gradio UI mounted at `/`: an upload slot per modality of the model (fill several for
one message), a multi-turn chat streamed as it is generated, the masks drawn over the input
image, generated images, and the projection experts' routing for the last input.

Its requests go through the same queue as the API's, so UI and API users share batches.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from onellm.errors import InputError
from onellm.serve.batcher import Busy, Job
from onellm.serve.inputs import check_typed, prepare

if TYPE_CHECKING:
    from onellm.serve.api import Service

WIDGETS = {"audio": lambda label: gr.Audio(type="filepath", sources=["upload"], label=label),
           "video": lambda label: gr.Video(sources=["upload"], label=label)}  # fmt: skip


def upload_slots(model) -> list[tuple[str, str | None, Any]]:
    """(modality key, part name or None, component) for each upload the model can take:
    an image widget where the modality has `pixels`, two slots for a paired input (rgb and
    its map, depth's and normal's `second`), audio and video players, else a file."""
    slots = []
    for key, mod in model.modalities.items():
        with gr.Tab(key):
            if hasattr(mod, "second"):
                slots.append((key, "rgb", gr.Image(type="filepath", sources=["upload"],
                                                   label=f"{key}: rgb", elem_id=f"input-{key}-rgb")))  # fmt: skip
                slots.append((key, mod.second, gr.File(label=f"{key}: {mod.second} map",
                                                       elem_id=f"input-{key}-{mod.second}")))  # fmt: skip
            elif hasattr(mod, "pixels"):
                slots.append((key, None, gr.Image(type="filepath", sources=["upload"], label=key,
                                                  elem_id=f"input-{key}")))  # fmt: skip
            else:
                make = WIDGETS.get(getattr(mod, "name", key))
                widget = make(key) if make else gr.File(label=key)
                widget.elem_id = f"input-{key}"
                slots.append((key, None, widget))
    return slots


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


def turns(chat: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The chatbot's messages -> (user, assistant) pairs."""
    out, user = [], None
    for m in chat:
        content = m["content"] if isinstance(m["content"], str) else ""
        if m["role"] == "user":
            user = content
        elif user is not None:
            out.append((user, content))
            user = None
    return out


def overlay(pixels, masks) -> tuple[np.ndarray, list] | None:
    """The input image (H, W, 3) uint8 and each mask with its label, for `gr.AnnotatedImage`."""
    if pixels is None or not masks:
        return None
    image = (pixels.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    return image, [(m.cpu().numpy().astype(float), f"<seg> {i + 1}") for i, m in enumerate(masks)]


def routing_figure(model, inputs) -> Any:
    """Mean routing weight of each projection expert, per modality of the last input."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.4))
    routed = {k: x for k, x in inputs.items() if hasattr(model.projector(k), "routes")}
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
        gr.Markdown(f"### onellm · `{service.model_id}`  \nUpload inputs (several modalities "
                    "may go in one message), then ask. The API is at `/v1/chat/completions`.")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=1):
                slots = upload_slots(model)
                with gr.Row():
                    max_tokens = gr.Slider(1, min(512, service.context), value=64, step=1,
                                           label="max tokens")  # fmt: skip
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature")
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="conversation", height=320, elem_id="chat")
                message = gr.Textbox(label="message", placeholder="Ask about the inputs",
                                     elem_id="prompt")  # fmt: skip
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                with gr.Row():
                    masks = gr.AnnotatedImage(label="masks over the input", elem_id="masks")
                    images = gr.Gallery(label="generated images", elem_id="images", height=200)
                routing = gr.Plot(label="routing: experts for the last input", elem_id="routing")

        def respond(text, history, n, temp, *values) -> Iterator[tuple]:
            history = list(history or [])
            try:
                raws = gathered(slots, values)
                check_typed(model, text or "", "message")
                prepared = prepare(model, raws, text or None, turns(history),
                                   context=service.context, max_tokens=int(n))  # fmt: skip
                events: queue.Queue = queue.Queue()
                job = Job(prepared.conversation, int(n), stream=True, temperature=float(temp),
                          emit=lambda kind, value: events.put((kind, value)))  # fmt: skip
                service.batcher.submit(job)
            except (InputError, Busy) as e:
                raise gr.Error(str(e)) from e
            history += [{"role": "user", "content": text or "(caption the input)"},
                        {"role": "assistant", "content": ""}]  # fmt: skip
            skip = gr.skip()
            while True:
                kind, value = events.get()
                if kind == "text":
                    history[-1] = {"role": "assistant", "content": history[-1]["content"] + value}
                    yield history, "", skip, skip, skip
                elif kind == "error":
                    raise gr.Error(f"generation failed: {value}")
                else:
                    break
            history[-1] = {"role": "assistant", "content": value.text}
            conv = prepared.conversation
            figure = routing_figure(model, conv.inputs) if conv.inputs else None
            yield history, "", overlay(conv.pixels, value.masks), value.images or None, figure

        outputs = [chat, message, masks, images, routing]
        inputs = [message, chat, max_tokens, temperature, *(w for _, _, w in slots)]
        send.click(respond, inputs, outputs)
        message.submit(respond, inputs, outputs)
        clear.click(lambda: ([], None, None, None), None, [chat, masks, images, routing])
    return ui
