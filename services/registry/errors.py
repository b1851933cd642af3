"""The registry's refusals that services/errors.py has no factory for."""

from __future__ import annotations

import grpc
from emma.common.v1 import errors_pb2

from services.errors import ApiError


def already_exists(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        errors_pb2.ERROR_REASON_RESOURCE_EXISTS,
        f"{name} exists already",
        metadata={"resource": name},
    )


def has_children(name: str, what: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_HAS_CHILDREN,
        f"{name} still has {what}; delete them first or set force",
        metadata={"resource": name},
    )
