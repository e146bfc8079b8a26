"""ASGI guards in front of the API: body size limit, body read timeout and bearer-token authentication."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.errors import RetrieverError
from app.settings import Settings

log = logging.getLogger(__name__)


class GuardError(RetrieverError):
    pass


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyRefused(Exception):
    """Raised into the app's receive() once our own 413/408 answer has gone out."""


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, or by counting a streamed body.
    408 (and the connection closed) when the whole body has not arrived within `read_timeout_s`:
    uvicorn has no body timeout, so a client trickling bytes (slowloris) would hold a request forever."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float | None = None) -> None:
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds the limit of {self.max_bytes} bytes (RETRIEVER_MAX_BODY_BYTES)"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    await _send_json(send, 400, "invalid Content-Length header")
                    return
                if too_large:
                    metrics.REJECTIONS.labels("body_too_large").inc()
                    await _send_json(send, 413, message)
                    return
        received = 0
        started = refused = body_done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s if self.read_timeout_s else None

        async def refuse(status: int, detail: str, reason: str, headers: list[tuple[bytes, bytes]]) -> NoReturn:
            # Answer here: the framework would turn the exception raised after this into a generic 400.
            nonlocal refused
            refused = True
            if not started:
                metrics.REJECTIONS.labels(reason).inc()
                await _send_json(send, status, detail, headers)
            raise _BodyRefused

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if refused:
                raise _BodyRefused
            if body_done or deadline is None:
                incoming = await receive()
            else:
                try:
                    incoming = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    await refuse(
                        408,
                        f"request body not received within {self.read_timeout_s:g} s "
                        f"(got {received} bytes; RETRIEVER_BODY_READ_TIMEOUT_S)",
                        "body_timeout",
                        [(b"connection", b"close")],
                    )
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                body_done = not incoming.get("more_body", False)
                if received > self.max_bytes:
                    await refuse(413, message, "body_too_large", [])
            return incoming

        async def tracking_send(outgoing: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 or 408 already went out
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        with contextlib.suppress(_BodyRefused):
            await self.app(scope, counting_receive, tracking_send)


def load_tokens(settings: Settings) -> list[bytes]:
    tokens: list[str] = []
    if settings.auth_tokens is not None:
        tokens += settings.auth_tokens.split(",")
        if not any(t.strip() for t in tokens):
            # Set but empty (say, from an empty Secret key): refuse rather than serve without authentication.
            raise GuardError("RETRIEVER_AUTH_TOKENS is set but holds no token (unset it to turn authentication off)")
    if settings.auth_tokens_file is not None:
        path = Path(settings.auth_tokens_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GuardError(f"{path}: cannot read auth tokens file ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise GuardError(f"{path}: auth tokens file is not UTF-8 text") from None
        from_file = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        if not any(t.strip() for t in from_file):
            raise GuardError(f"{path}: auth tokens file holds no token")
        tokens += from_file
    return [t.strip().encode() for t in tokens if t.strip()]


class TokenSource:
    """The configured tokens, re-read when the tokens file changes (a rotated Secret), no restart.

    The file is looked at (one stat) at most once per `check_interval_s`. A change that leaves the
    file unusable (empty while being rewritten, unreadable) keeps the previous tokens: never fall
    back to no authentication. Kubernetes updates a mounted Secret by swapping a symlink, which
    changes the inode that `stat` follows."""

    def __init__(self, settings: Settings, check_interval_s: float = 1.0) -> None:
        self.settings, self.check_interval_s = settings, check_interval_s
        self.tokens = load_tokens(settings)
        self._file = Path(settings.auth_tokens_file) if settings.auth_tokens_file is not None else None
        self._seen = self._signature()
        self._checked_at = time.monotonic()

    def _signature(self) -> tuple[int, int, int] | None:
        if self._file is None:
            return None
        try:
            stat = self._file.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def current(self) -> list[bytes]:
        if self._file is None or time.monotonic() - self._checked_at < self.check_interval_s:
            return self.tokens
        self._checked_at = time.monotonic()
        signature = self._signature()
        if signature is None or signature == self._seen:
            return self.tokens
        try:
            tokens = load_tokens(self.settings)
        except GuardError as exc:
            log.warning("auth tokens file changed but is not usable, keeping the previous tokens: %s", exc)
            metrics.TOKEN_RELOADS.labels("failed").inc()
            return self.tokens
        self._seen, self.tokens = signature, tokens
        log.info("auth tokens re-read from %s: %d tokens", self._file, len(tokens))
        metrics.TOKEN_RELOADS.labels("ok").inc()
        return tokens


class AuthMiddleware:
    """Bearer tokens compared in constant time; 401 says no more than that a token is needed."""

    def __init__(self, app: ASGIApp, tokens: list[bytes] | TokenSource, open_paths: set[str]) -> None:
        self.app, self.open_paths = app, open_paths
        self._tokens = tokens.current if isinstance(tokens, TokenSource) else lambda: tokens

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, presented = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                presented = presented.strip()
                # Compare against every token (no early exit), so timing says nothing about which matched.
                matches = [hmac.compare_digest(presented, token) for token in self._tokens()]
                return any(matches)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        metrics.REJECTIONS.labels("unauthorized").inc()
        await _send_json(send, 401, "unauthorized", [(b"www-authenticate", b"Bearer")])


class EarlyRefusalMiddleware:
    """Refuse a search before its body is read when even one query would be refused.

    At over a thousand 1-query requests a second, parsing the JSON of requests that admission then
    refuses costs the event loop most of its time; this answers them from the headers alone. The
    body stays unread, so the connection is closed after the answer."""

    def __init__(
        self, app: ASGIApp, refusal: Callable[[], Exception | None], paths: set[str], status: int, retry_after_s: int
    ) -> None:
        self.app, self.refusal, self.paths = app, refusal, paths
        self.status, self.retry_after = status, str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            refused = self.refusal()
            if refused is not None:
                metrics.REJECTIONS.labels("queue_full").inc()
                headers = [(b"retry-after", self.retry_after), (b"connection", b"close")]
                await _send_json(send, self.status, str(refused), headers)
                return
        await self.app(scope, receive, send)
