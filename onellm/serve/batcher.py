"""Many users, one model: a request queue whose jobs share `generate` calls.

A worker thread takes the first waiting job, waits up to `max_wait_s` for more (or until
`max_batch`), splits them by sampling settings (one `generate` call samples with one
temperature and top-p) and runs each group as one left-padded batch
(onellm/inference/chat.py `generate`): every row keeps its own prompt, history, inputs and token
limit, and greedy rows get the tokens they would get alone (tests/serve/test_batching.py).
Jobs that arrive while a batch runs wait for the next one; a job whose client has left
(`Job.cancelled`, set by the API when a stream's connection closes) is skipped if still
queued, and stops at its next token if running, so it no longer holds its batch.
The queue is bounded: a full one refuses new jobs (HTTP 503) instead of growing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onellm.inference.chat import Conversation, generate

if TYPE_CHECKING:
    from onellm.model import OneLLM


class Busy(Exception):
    """The queue is full."""


@dataclass
class Job:
    """One request: its conversation, settings, and where its events go. `emit(kind, value)`
    is called from the worker thread with ("text", piece) while streaming, then once with
    ("done", ChatResponse) or ("error", exception)."""

    conversation: Conversation
    max_tokens: int
    emit: Callable[[str, Any], None]
    temperature: float = 0.0
    top_p: float = 1.0
    stream: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sampling(self) -> tuple[float, float]:
        """What must be equal for two jobs to share a call (greedy ignores top-p)."""
        return (self.temperature, self.top_p) if self.temperature > 0 else (0.0, 1.0)


class Batcher:
    """The queue and its worker thread (`start` / `stop`)."""

    def __init__(
        self,
        model: OneLLM,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.02,
        max_queue: int = 256,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.max_batch, self.max_wait_s = model, max_batch, max_wait_s
        self.generate_kwargs = dict(generate_kwargs or {})  # every call's extra generate options
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.sizes: Counter[int] = Counter()  # batch size -> how many generate calls had it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Batcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="onellm-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full as e:
            raise Busy(f"the server has {self.jobs.maxsize} requests waiting; retry later") from e

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            batch, deadline = [first], time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple[float, float], list[Job]] = {}
            for job in batch:
                if not job.cancelled.is_set():
                    groups.setdefault(job.sampling(), []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        temperature, top_p = jobs[0].sampling()
        rows = [j.conversation for j in jobs]
        for row, job in zip(rows, jobs, strict=True):
            row.max_new_tokens, row.streamed = job.max_tokens, job.stream
            row.cancelled = job.cancelled.is_set  # a client that left stops its row at once
        self.sizes[len(jobs)] += 1
        try:
            replies = generate(
                self.model,
                rows,
                max_new_tokens=max(j.max_tokens for j in jobs),
                temperature=temperature,
                top_p=top_p,
                on_text=lambda i, piece: jobs[i].emit("text", piece),
                **self.generate_kwargs,
            )
        except Exception as e:  # the batch failed: each of its requests hears why
            for job in jobs:
                job.emit("error", e)
            return
        for job, reply in zip(jobs, replies, strict=True):
            job.emit("done", reply)
