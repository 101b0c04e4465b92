"""ASGI middleware: every request has an id, and every answer says it (`X-Request-ID`).

A client's own id is kept when it is short and plain (`xmlx.logs.accept_request_id`);
otherwise, or when none is sent, the API makes one. While the request runs the id is
the context's request id: log lines carry it, the jobs the request creates record it,
and the Celery messages it sends carry it to the workers (`xmlx.messaging`).
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xmlx import tracing
from xmlx.logs import REQUEST_ID_HEADER, accept_request_id, request_id_context


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with request_id_context(request_id):
            tracing.tag_current_span(request_id)
            await self.app(scope, receive, send_with_id)
