"""Connections that send nothing are closed. uvicorn's h11 protocol closes an idle
connection only after it has answered a request on it (`timeout_keep_alive`); one that
never completes a request's head (opened and silent, or a header trickled a byte at a time)
stays open for as long as its client likes. `TimedH11` gives each request's head
`HEAD_TIMEOUT_S` seconds from the connection's start (or from the first byte after the
previous answer); uvicorn has no option for this."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0  # a request's line and headers are a few hundred bytes
IDLE_TIMEOUT_S = 5  # after an answer, uvicorn's own keep-alive timeout (its default)


class TimedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head."""

    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self.head_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.conn.their_state is h11.IDLE  # no complete request head yet
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self.head_timeout)
        elif not waiting:
            self.stop_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_timer()
        super().connection_lost(exc)

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timeout(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
