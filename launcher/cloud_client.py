"""What the operator commands that talk to a cloud over gRPC share: the password, the TLS default, the
channel and the one-line explanation of a failed call."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import grpc

from core.errors import ConfigError

PASSWORD_ENV = "EMMA_PASSWORD"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def operator_password(env: dict[str, str], email: str) -> str:
    """From EMMA_PASSWORD, else asked on a terminal; never a flag (it would show in the process list)."""
    password = env.get(PASSWORD_ENV, "")
    if not password and sys.stdin.isatty():
        password = getpass.getpass(f"password of {email}: ")
    if not password:
        raise ConfigError(f"no password: set {PASSWORD_ENV} or run on a terminal to be asked")
    return password


def tls_for(cloud: str, tls_flag: bool | None) -> bool:
    """--tls/--no-tls as given; otherwise off for a loopback cloud and on for any other."""
    if tls_flag is not None:
        return tls_flag
    return cloud.rsplit(":", 1)[0] not in _LOOPBACK


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
