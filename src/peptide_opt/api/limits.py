"""The request body size limit (MAX_UPLOAD_MB), enforced while the body streams in."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """The body grew past the limit while it was being read."""


class BodySizeLimit:
    """ASGI middleware that responds with 413 to bodies over ``max_bytes``.

    A declared ``Content-Length`` over the limit is rejected before any byte is read. A
    body without one (chunked) is counted as it streams and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, limit_mb: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_mb = limit_mb

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._reject(send, received)

    async def _reject(self, send: Send, size: int) -> None:
        detail = (
            f"request body of {size / 1024 / 1024:.1f} MB or more exceeds the upload "
            f"limit of {self.limit_mb} MB (MAX_UPLOAD_MB)"
        )
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
