"""The contract's error vocabulary as it travels in a google.rpc.Status: ErrorInfo domain and reasons.

Shared by the cloud services (which raise them), the gateway (which turns them into JSON bodies) and
clients and tests (which read them back).
"""

from __future__ import annotations

from emma.common.v1 import errors_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "emma.energy"


def reason_name(reason: int) -> str:
    """ErrorReason enum value -> the string sent in ErrorInfo.reason ("TELEMETRY_STALE")."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")  # type: ignore[arg-type]


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo inside a rich status, if any (clients and tests use this)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):  # False when the detail is another type
            return info
    return None
