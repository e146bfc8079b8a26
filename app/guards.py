"""ASGI guards in front of the API: body size limit and bearer-token authentication."""

from __future__ import annotations

import contextlib
import hmac
import json
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.settings import Settings


class GuardError(Exception):
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


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

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
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes and not refused:
                    # Answer here: the framework would turn the exception below into a generic 400.
                    refused = True
                    if not started:
                        metrics.REJECTIONS.labels("body_too_large").inc()
                        await _send_json(send, 413, message)
                    raise _BodyTooLarge
            return incoming

        async def tracking_send(outgoing: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 already went out
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, tracking_send)


def load_tokens(settings: Settings) -> list[bytes]:
    tokens: list[str] = []
    if settings.auth_tokens:
        tokens += settings.auth_tokens.split(",")
    if settings.auth_tokens_file is not None:
        path = Path(settings.auth_tokens_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise GuardError(f"{path}: cannot read auth tokens file ({exc.strerror})") from None
        tokens += [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        if not any(t.strip() for t in tokens):
            raise GuardError(f"{path}: auth tokens file holds no token")
    return [t.strip().encode() for t in tokens if t.strip()]


class AuthMiddleware:
    """Bearer tokens compared in constant time; 401 says no more than that a token is needed."""

    def __init__(self, app: ASGIApp, tokens: list[bytes], open_paths: set[str]) -> None:
        self.app, self.tokens, self.open_paths = app, tokens, open_paths

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, presented = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                presented = presented.strip()
                # Compare against every token (no early exit), so timing says nothing about which matched.
                matches = [hmac.compare_digest(presented, token) for token in self.tokens]
                return any(matches)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        metrics.REJECTIONS.labels("unauthorized").inc()
        await _send_json(send, 401, "unauthorized", [(b"www-authenticate", b"Bearer")])
