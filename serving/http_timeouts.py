"""uvicorn with a deadline for request headers, so idle or slow-loris connections cannot pile up.

uvicorn (h11) only times out a keep-alive connection *after* a response, and any byte received cancels that
timer: a client that connects and sends nothing, or one header byte every few seconds, holds a connection (and a
file descriptor) forever. Here every connection must deliver a request's complete headers within
`header_timeout` seconds of being opened or of its previous response; slow bodies are bounded by the app
(serving.server, 408). Uses uvicorn's h11 protocol (pure Python, the default when httptools is not installed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0  # s to send a request's headers on a new or idle connection
DEFAULT_KEEP_ALIVE = 5  # s an idle keep-alive connection stays open (uvicorn's own timer)


class HeaderDeadlineH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose next request's headers do not arrive in time."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        finished = self.cycle  # captured first: super() may already start a pipelined request's cycle
        super().on_response_complete()
        self._arm_header_deadline(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self, waiting_after: Any = None) -> None:
        """Close unless a request after `waiting_after` (None: the first) has its headers parsed in time: a new
        request replaces self.cycle."""
        self._cancel_header_deadline()
        if self.transport.is_closing():
            return
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_hit, waiting_after)

    def _cancel_header_deadline(self) -> None:
        task = getattr(self, "_header_deadline", None)
        if task is not None:
            task.cancel()
            self._header_deadline = None

    def _header_deadline_hit(self, waiting_after: Any) -> None:
        self._header_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is waiting_after and idle and not self.transport.is_closing():
            self.logger.debug("closing a connection that sent no complete request headers in %.0f s",
                              self.header_timeout)
            self.transport.close()


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                   header_timeout: float = DEFAULT_HEADER_TIMEOUT, keep_alive: int = DEFAULT_KEEP_ALIVE,
                   **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config serving `app` with the header deadline and an explicit keep-alive timeout."""
    protocol = type("HeaderDeadlineH11", (HeaderDeadlineH11Protocol,), {"header_timeout": float(header_timeout)})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          timeout_keep_alive=keep_alive, **kwargs)
