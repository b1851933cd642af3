"""The alarm domain's error root."""

from __future__ import annotations

from core.errors import ConfigError
from services.errors import ServiceError


class AlarmError(ServiceError):
    """Root of the alarm domain's own errors."""


class AlarmConfigError(AlarmError, ConfigError):
    """An EMMA_ALARM_* variable is malformed."""
