"""The gateway's one error root, and every error a client sees as an AIP-193 JSON body.

A client of the REST API gets the same body shape whether the error came from a service (a gRPC
status with google.rpc.Status details in its trailer) or from the gateway itself (no route, bad JSON,
body too large, rate limited):

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "details": [{"@type": ..., ...}]}}

`code` is the HTTP status, `status` the google.rpc.Code name, and `details` the Status details as
proto3 JSON with "@type", ErrorInfo first, so clients switch on ErrorInfo.reason in both cases.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.errors import ConfigError, EmmaError
from core.status import ERROR_DOMAIN, reason_name

# google/rpc/code.proto documents the HTTP mapping of every code in its comments.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class GatewayError(EmmaError):
    """Root of every error raised by the gateway package."""


class GatewayConfigError(GatewayError, ConfigError):
    """An EMMA_GATEWAY_* variable or flag is invalid; the message names it."""


class RouteError(GatewayError):
    """A contract's google.api.http rule cannot be served (bad template, unknown field, conflict)."""


class HttpError(GatewayError):
    """An error answered to an HTTP client: status, gRPC code, message and google.rpc.Status details."""

    def __init__(
        self,
        http_status: int,
        code: int,
        message: str,
        details: Sequence[Message | dict[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.http_status,
                "status": code_pb2.Code.Name(self.code),
                "message": self.message,
                "details": [d if isinstance(d, dict) else _detail_json(d) for d in self.details],
            }
        }

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":"), ensure_ascii=False).encode()

    def __str__(self) -> str:
        return f"{self.http_status} {code_pb2.Code.Name(self.code)}: {self.message}"


def _detail_json(detail: Message) -> dict[str, Any]:
    packed = detail if isinstance(detail, any_pb2.Any) else _pack(detail)
    try:
        return json_format.MessageToDict(packed)
    except (json_format.Error, TypeError, KeyError):
        # A detail type this gateway's descriptor pool does not know: still say what it is.
        return {"@type": packed.type_url, "value": base64.b64encode(packed.value).decode()}


def _pack(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def gateway_error(
    http_status: int,
    code: int,
    reason: int,
    message: str,
    metadata: Mapping[str, str] | None = None,
    field_violations: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> HttpError:
    """An error the gateway itself answers, with the same ErrorInfo (and BadRequest) a service sends."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=reason_name(reason), domain=ERROR_DOMAIN, metadata=dict(metadata or {}))
    ]
    if field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in field_violations
                ]
            )
        )
    return HttpError(http_status, code, message, details, headers)


def bad_request(field: str, description: str, reason: int = errors_pb2.ERROR_REASON_FIELD_INVALID) -> HttpError:
    """400 for a malformed request: the field is a query parameter, a path variable, "body" or a header."""
    return gateway_error(
        400,
        code_pb2.INVALID_ARGUMENT,
        reason,
        f"{field}: {description}",
        metadata={"field": field},
        field_violations=[(field, description)],
    )


def no_route(method: str, path: str) -> HttpError:
    return gateway_error(
        404,
        code_pb2.NOT_FOUND,
        errors_pb2.ERROR_REASON_ROUTE_NOT_FOUND,
        f"no API method at {method} {path}; see /openapi.json",
        metadata={"path": path},
    )


def method_not_allowed(method: str, path: str, allowed: Sequence[str]) -> HttpError:
    allow = ", ".join(allowed)
    return gateway_error(
        405,
        code_pb2.UNIMPLEMENTED,  # what grpc-gateway answers too: the method is not part of the API
        errors_pb2.ERROR_REASON_HTTP_METHOD_NOT_ALLOWED,
        f"{method} is not allowed on {path}; allowed: {allow}",
        metadata={"method": method, "allow": allow},
        headers={"allow": allow},
    )


def too_large(limit: int) -> HttpError:
    return gateway_error(
        413,
        code_pb2.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_REQUEST_TOO_LARGE,
        f"the request body is larger than {limit} bytes (EMMA_GATEWAY_MAX_BODY_BYTES)",
        metadata={"max_body_bytes": str(limit)},
    )


def rate_limited(retry_after_s: float) -> HttpError:
    whole_seconds = max(1, math.ceil(retry_after_s))
    return gateway_error(
        429,
        code_pb2.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_RATE_LIMITED,
        f"too many write requests from this address; retry in {whole_seconds} s",
        metadata={"retry_after_ms": str(math.ceil(retry_after_s * 1000))},
        headers={"retry-after": str(whole_seconds)},
    )


def unsupported_media_type(content_type: str) -> HttpError:
    error = bad_request(
        "Content-Type",
        f"{content_type!r} is not JSON; send application/json",
        errors_pb2.ERROR_REASON_MEDIA_TYPE_UNSUPPORTED,
    )
    error.http_status = 415
    return error


def token_too_long(limit: int) -> HttpError:
    """401 for an Authorization header longer than any token EMMA issues: it cannot be valid, and
    sent on as gRPC metadata it would exceed the metadata size limit and come back as 429."""
    return gateway_error(
        401,
        code_pb2.UNAUTHENTICATED,
        errors_pb2.ERROR_REASON_TOKEN_INVALID,
        f"the Authorization header is longer than {limit} bytes, which no EMMA token is",
        metadata={"max_authorization_bytes": str(limit)},
    )


def internal_error() -> HttpError:
    return gateway_error(
        500,
        code_pb2.INTERNAL,
        errors_pb2.ERROR_REASON_UNSPECIFIED,
        "internal error in the gateway; it logged the details",
    )


# Messages the client library writes for errors that never reached a service; they name internal
# addresses and say nothing a REST client can act on, so the gateway says it plainly instead.
_TRANSPORT_MESSAGES = {
    code_pb2.UNAVAILABLE: "the service is unavailable; retry with backoff",
    code_pb2.DEADLINE_EXCEEDED: "the service did not answer within the request deadline",
    code_pb2.CANCELLED: "the call was cancelled",
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> HttpError:
    """A failed gRPC call -> the HTTP error, with the details from the google.rpc.Status trailer."""
    code = error.code().value[0]
    status = _rich_status(error)
    if status is not None:
        details: list[Message] = list(status.details)
        message = status.message or (error.details() or "")
    else:
        message = _TRANSPORT_MESSAGES.get(code) or error.details() or code_pb2.Code.Name(code)
        # AIP-193 asks for an ErrorInfo in every error; UNSPECIFIED honestly says the service gave none.
        details = [
            error_details_pb2.ErrorInfo(
                reason=reason_name(errors_pb2.ERROR_REASON_UNSPECIFIED),
                domain=ERROR_DOMAIN,
                metadata={"grpc_status": code_pb2.Code.Name(code)},
            )
        ]
    return HttpError(HTTP_STATUS.get(code, 500), code, message, details, _retry_after(details))


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    # The stubs type AioRpcError's trailers like the sync API's; at run time they are (key, value) pairs.
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer must not turn an error answer into a crash
                return None
    return None


def _retry_after(details: Sequence[Message]) -> dict[str, str]:
    """Retry-After from RetryInfo or from ErrorInfo metadata retry_after_ms (RATE_LIMITED)."""
    for detail in details:
        if not isinstance(detail, any_pb2.Any):
            continue
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return {"retry-after": str(max(1, math.ceil(retry.retry_delay.ToTimedelta().total_seconds())))}
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.metadata.get("retry_after_ms", "").isdigit():
            return {"retry-after": str(max(1, math.ceil(int(info.metadata["retry_after_ms"]) / 1000)))}
    return {}
