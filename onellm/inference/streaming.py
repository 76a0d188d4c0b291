"""Streaming a `generate` batch's text: each row's newly certain text handed on as it is
generated (`RowStreamer`), and what `chat(..., stream=True)` returns (`ChatStream`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from onellm.inference.reply import ChatResponse
from onellm.modeling.template import cut_at_stop, stream_visible


class RowStreamer(BaseStreamer):
    """`generate`'s streamer for a batch: hands each row's newly certain text to `on_text`."""

    def __init__(
        self,
        tok,
        stops: Sequence[str],
        limits: Sequence[int],
        on_text: Callable[[int, str], None],
        follow: Sequence[bool],
        cancelled: Sequence[Callable[[], bool] | None] = (),
    ) -> None:
        self.tok, self.stops, self.limits, self.on_text = tok, list(stops), list(limits), on_text
        self.ids: list[list[int]] = [[] for _ in limits]
        self.sent = [""] * len(limits)
        self.follow = list(follow)  # rows whose text is decoded as it comes
        self.done = [not f for f in follow]
        self.cancelled = list(cancelled) or [None] * len(limits)  # rows nobody hears any more
        self.prompt = True  # generate first puts the prompt's ids (none for inputs_embeds)

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:
            self.prompt = False
            return
        for i, t in enumerate(value.reshape(len(self.ids), -1)[:, -1].tolist()):
            if not self.done[i] and (gone := self.cancelled[i]) is not None and gone():
                self.done[i], self.follow[i] = True, False  # its final text is not sent either
            if self.done[i]:
                continue
            if t == self.tok.eos_token_id:
                self.done[i] = True
                continue
            self.ids[i].append(t)
            self.done[i] = len(self.ids[i]) >= self.limits[i]
            self._send(i, final=False)

    def end(self) -> None:
        for i in range(len(self.ids)):
            if self.follow[i]:
                self._send(i, final=True)

    def _send(self, i: int, final: bool) -> None:
        text = self.tok.decode(self.ids[i], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # a character still being spelled out
            return
        visible = cut_at_stop(text, self.stops) if final else stream_visible(text, self.stops)
        if len(visible) > len(self.sent[i]) and visible.startswith(self.sent[i]):
            self.on_text(i, visible[len(self.sent[i]) :])
            self.sent[i] = visible


class ChatStream:
    """What `chat(..., stream=True)` returns: iterate it for the reply's text pieces as they
    are generated (they join to the final text); then `.response` is the whole reply, masks
    and images included. A reader that stops early (breaks out of its loop) stops the
    generation at its next token (`left`, which the row's `cancelled` reads)."""

    def __init__(self, run: Callable[[Callable[[int, str], None]], ChatResponse]) -> None:
        self._run = run
        self.response: ChatResponse | None = None
        self.left = threading.Event()
        self.thread: threading.Thread | None = None  # the generating thread, once iterated

    def __iter__(self) -> Iterator[str]:
        pieces: queue.Queue = queue.Queue()
        done = object()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["reply"] = self._run(lambda i, piece: pieces.put(piece))
            except BaseException as e:  # handed to the reading thread, which raises it
                result["error"] = e
            pieces.put(done)

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        finished = False
        try:
            while (piece := pieces.get()) is not done:
                yield piece
            finished = True
        finally:
            if not finished:  # the reader left (the generator was closed)
                self.left.set()
        self.thread.join()
        if "error" in result:
            raise result["error"]
        self.response = result["reply"]
