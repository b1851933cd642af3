"""CORS for browsers, restricted to the configured origins, with errors in the API's own shape.

Starlette's CORSMiddleware answers a refused preflight with plain text; the gateway promises AIP-193
bodies for every error it originates, so it has this small middleware instead. Beyond CORS proper, a
write (POST, PUT, PATCH, DELETE) carrying a foreign Origin is refused outright: CORS only stops a page
from reading the answer, not a form-like request from having its effect.
"""

from __future__ import annotations

from collections.abc import Iterable

from emma.common.v1 import errors_pb2
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import HttpError, bad_request
from gateway.limits import WRITE_METHODS

ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "accept", "traceparent", "tracestate"})
# Readable by scripts: Retry-After tells a rate-limited page when to come back.
EXPOSED_HEADERS = "retry-after, traceparent"
PREFLIGHT_MAX_AGE_S = 600


class CorsMiddleware:
    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.rstrip("/") for o in origins)
        self.any_origin = "*" in self.origins

    def allowed(self, origin: str, scope: Scope, headers: Headers) -> bool:
        if self.any_origin or origin in self.origins:
            return True
        # The gateway's own pages (the docs, a dashboard it serves) are same-origin.
        host = headers.get("host")
        return host is not None and origin == f"{scope.get('scheme', 'http')}://{host}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(origin, scope, headers)
        method = scope["method"]
        if method == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, allowed, headers, send)
            return
        if not allowed:
            if method in WRITE_METHODS:
                await _send_error(send, _origin_refused(origin))
                return
            # Reads go through without CORS headers: the browser then keeps the answer from the page.
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["access-control-allow-origin"] = origin
                out["access-control-expose-headers"] = EXPOSED_HEADERS
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: str, allowed: bool, headers: Headers, send: Send) -> None:
        if not allowed:
            await _send_error(send, _origin_refused(origin))
            return
        wanted_method = headers["access-control-request-method"].upper()
        if wanted_method not in ALLOWED_METHODS:
            await _send_error(send, bad_request("Access-Control-Request-Method", f"{wanted_method} is not allowed"))
            return
        wanted_headers = [
            h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()
        ]
        refused = [h for h in wanted_headers if h not in ALLOWED_HEADERS]
        if refused:
            await _send_error(send, bad_request("Access-Control-Request-Headers", f"not allowed: {', '.join(refused)}"))
            return
        out = [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", ", ".join(ALLOWED_METHODS)),
            ("access-control-allow-headers", ", ".join(sorted(ALLOWED_HEADERS))),
            ("access-control-max-age", str(PREFLIGHT_MAX_AGE_S)),
            ("vary", "Origin"),
        ]
        await send(
            {"type": "http.response.start", "status": 204, "headers": [(k.encode(), v.encode()) for k, v in out]}
        )
        await send({"type": "http.response.body", "body": b""})


def _origin_refused(origin: str) -> HttpError:
    return bad_request(
        "Origin",
        f"{origin} may not call this API (EMMA_GATEWAY_CORS_ORIGINS)",
        errors_pb2.ERROR_REASON_ORIGIN_NOT_ALLOWED,
    )


async def _send_error(send: Send, error: HttpError) -> None:
    body = error.json_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
