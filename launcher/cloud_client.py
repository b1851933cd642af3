"""What the operator commands that talk to a cloud over gRPC share: the channel and the one-line
explanation of a failed call."""

from __future__ import annotations

from pathlib import Path

import grpc

from core.errors import ConfigError


def cloud_channel(cloud: str, tls: bool, ca_file: Path | None) -> grpc.aio.Channel:
    """A channel to `cloud` (host:port), TLS with the system roots or `ca_file` when `tls`."""
    if not tls:
        return grpc.aio.insecure_channel(cloud)
    try:
        roots = ca_file.read_bytes() if ca_file is not None else None
    except OSError as exc:
        raise ConfigError(f"--ca-file {ca_file}: {exc.strerror}") from None
    return grpc.aio.secure_channel(cloud, grpc.ssl_channel_credentials(roots))


def failure_text(what: str, exc: grpc.aio.AioRpcError, cloud: str) -> str:
    """One line for a failed call: an unreachable cloud is said as such, anything else by its status."""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"{what}: cannot reach the cloud at {cloud} ({exc.details()}); is it running?"
    return f"{what}: {exc.code().name}: {exc.details()}"
