"""uvicorn's HTTP protocol with a bound on the time to receive request headers.

uvicorn times out idle keep-alive connections only: a client that opens a connection and sends
its headers byte by byte (or never) holds it forever. Here every request's headers must arrive
within `header_timeout_s` of the connection opening or the previous response ending; otherwise the
connection is closed. Bodies have their own bound (`BodyLimitMiddleware`).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools missing (uvicorn without [standard]): no header bound from us
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol] | None:
    """A protocol class for `uvicorn.Config(http=...)`, or None (uvicorn's own) when unavailable."""
    if HttpToolsProtocol is None or header_timeout_s <= 0:
        return None

    class HeaderTimeoutProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            from app import metrics  # not at import: the supervisor process must not create metric values

            self._header_timer = None
            metrics.REJECTIONS.labels("header_timeout").inc()
            log.debug("closing a connection whose request headers took over %.1f s", header_timeout_s)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
