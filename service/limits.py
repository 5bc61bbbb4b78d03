"""Request limits enforced before any handler runs: body size (413) and requests in progress (503).

Body size (413 Payload Too Large): a declared Content-Length over the limit is refused without reading; otherwise the body is read here,
counting bytes as they stream in (chunked uploads have no Content-Length), and refused as soon as the
count passes the limit. An accepted body is replayed to the app unchanged.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware: bodies over `max_bytes` get 413 with a JSON `detail`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body too large: the limit is {self.max_bytes} bytes"
        payload = json.dumps({"detail": detail}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": payload})


class AdmissionLimit:
    """ASGI middleware: at most `max_inflight` requests are handled at once; the next get 503 + Retry-After
    at once, before their body is read, so overload sheds work instead of queueing it without bound (memory
    and the latency of admitted requests stay bounded). Probes (`exempt` paths) are always admitted."""

    def __init__(self, app: ASGIApp, max_inflight: int, exempt: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")):
        self.app = app
        self.max_inflight = max_inflight
        self.exempt = exempt
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            detail = f"overloaded: {self.inflight} requests in progress (the limit is {self.max_inflight}); retry shortly"
            payload = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
