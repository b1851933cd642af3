"""One exception root for the edge daemon, so callers can catch everything we raise on purpose.

Every deliberate edge error derives from `EdgeError`, itself under `core.errors.EmmaError`. Errors that
belong to one driver (a Modbus exception response, a silent CAN bus) live beside that driver and derive
from `EdgeError` too.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError, EmmaError


class EdgeError(EmmaError):
    """Root of every error the edge daemon raises deliberately."""


class SiteConfigError(EdgeError, ConfigError):
    """A site configuration is unusable. Names the file, the dotted key and the reason."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {reason}")


class ChannelError(EdgeError):
    """A channel name is malformed or a channel is used against its declared category."""


class NotWritableError(ChannelError):
    """A command or controller targets a channel that does not exist (`known` False) or is read-only."""

    def __init__(self, channel: str, *, known: bool) -> None:
        self.channel = channel
        self.known = known
        super().__init__(f"{channel} is not writable" if known else f"unknown channel {channel}")


class LimitError(EdgeError):
    """The effective limits of an output channel cannot be established (unknown, missing or stale)."""


class CommandError(EdgeError):
    """A command cannot even be queued (unknown or read-only channel, malformed value)."""


class ScheduleError(EdgeError):
    """A schedule is malformed or targets channels it may not write."""


class OutboxError(EdgeError):
    """The durable outbox refused an operation."""
