"""The gRPC side of the uplink: the API key, the channel (TLS, keepalive, sizes) and stream status.

A new channel is created for every stream attempt, so the reconnect timing is ours (see backoff.py)
and not the channel's internal backoff, which would otherwise stretch to two minutes after a long
outage.

Keepalive: the client pings every `keepalive_time_s` (15 s by default; the cloud permits one ping per
10 s and answers faster pings with GOAWAY), also when no call is active, and declares the connection
dead after `keepalive_timeout_s` without an answer. That detects a half-open TCP connection (a NAT
that forgot us) in seconds instead of the kernel's hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from edge_daemon.config import CloudConfig
from edge_daemon.errors import SiteConfigError

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def agent_version() -> str:
    try:
        return metadata.version("emma")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def read_api_key(cloud: CloudConfig, source: Path | str) -> str:
    """The edge's API key from `cloud.key_file`, stripped; a SiteConfigError naming the file otherwise."""
    try:
        key = cloud.key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SiteConfigError(
            source, "cloud.key_file", f"cannot read the API key from {cloud.key_file}: {exc.strerror or exc}"
        ) from exc
    except UnicodeDecodeError:
        raise SiteConfigError(source, "cloud.key_file", f"{cloud.key_file} is not a text file") from None
    if not key:
        raise SiteConfigError(source, "cloud.key_file", f"{cloud.key_file} is empty")
    if any(c.isspace() for c in key):
        raise SiteConfigError(source, "cloud.key_file", f"{cloud.key_file} holds more than one word")
    return key


def read_root_certificates(cloud: CloudConfig, source: Path | str) -> bytes | None:
    if cloud.ca_file is None:
        return None
    try:
        return cloud.ca_file.read_bytes()
    except OSError as exc:
        raise SiteConfigError(source, "cloud.ca_file", f"cannot read {cloud.ca_file}: {exc.strerror or exc}") from exc


def channel_options(cloud: CloudConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.keepalive_time_ms", round(cloud.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(cloud.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", cloud.max_message_bytes),
        ("grpc.max_receive_message_length", cloud.max_message_bytes),
        # The stream is resumed by our own protocol (Welcome.last_stored_batch_seq), never replayed.
        ("grpc.enable_retries", 0),
        ("grpc.primary_user_agent", f"emma-edge/{agent_version()}"),
    ]


def open_channel(cloud: CloudConfig, root_certificates: bytes | None = None) -> grpc.aio.Channel:
    options = channel_options(cloud)
    if cloud.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(cloud.endpoint, credentials, options=options)
    return grpc.aio.insecure_channel(cloud.endpoint, options=options)


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """How a stream ended: gRPC code, ErrorInfo reason (e.g. EDGE_KEY_INVALID) and details."""

    code: grpc.StatusCode | None
    reason: str = ""
    details: str = ""

    @property
    def code_name(self) -> str:
        return "NONE" if self.code is None else self.code.name


def error_reason(trailing_metadata: Any) -> str:
    """The ErrorInfo reason of a rich error status (google.rpc.Status in the trailers), or ""."""
    if not trailing_metadata:
        return ""
    for key, value in trailing_metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
    return ""


def status_of_error(exc: grpc.aio.AioRpcError) -> StreamStatus:
    return StreamStatus(exc.code(), error_reason(exc.trailing_metadata()), exc.details() or "")


async def status_of_call(call: grpc.aio.Call) -> StreamStatus:
    """The final status of a call that has ended (or is ending)."""
    code = await call.code()
    return StreamStatus(code, error_reason(await call.trailing_metadata()), await call.details() or "")
