"""The one error root of the services package and the API error every RPC raises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from emma.common.v1 import errors_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from core.errors import ConfigError, EmmaError
from core.status import ERROR_DOMAIN, error_info_of, reason_name

# Re-exported: the services' code raises and reads these through this one module.
__all__ = [
    "ERROR_DOMAIN",
    "ApiError",
    "ConfigError",
    "ServiceError",
    "StartupError",
    "error_info_of",
    "invalid_field",
    "not_found",
    "reason_name",
]


class ServiceError(EmmaError):
    """Root of every error raised by EMMA's cloud code."""


class StartupError(ServiceError):
    """The service cannot start (database unreachable, port in use, migration failed)."""


class ApiError(ServiceError):
    """An error an RPC answers with: a gRPC code, an ErrorInfo reason from the contract, a message.

    Raise it anywhere below a handler; the server interceptor turns it into a google.rpc.Status with
    ErrorInfo (and BadRequest for field violations) as AIP-193 asks.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: int,
        message: str,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason_name(reason)
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details = [_pack(info)]
        if self.field_violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.field_violations
                ]
            )
            details.append(_pack(bad))
        code_value: int = self.code.value[0]
        return status_pb2.Status(code=code_value, message=self.message, details=details)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def invalid_field(field: str, description: str) -> ApiError:
    """The common case of a bad request: one named field is wrong."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_FIELD_INVALID,
        f"{field}: {description}",
        metadata={"field": field},
        field_violations=[(field, description)],
    )


def not_found(resource: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
        f"{resource} not found",
        metadata={"resource": resource},
    )
