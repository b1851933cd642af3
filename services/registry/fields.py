"""Field checks every registry resource shares: ids chosen by the caller and display names."""

from __future__ import annotations

import re

from services.errors import invalid_field
from services.names import ID_PATTERN

MAX_DISPLAY_NAME = 200


def check_id(value: str, field: str, pattern: re.Pattern[str] = ID_PATTERN) -> str:
    if not pattern.match(value):
        raise invalid_field(
            field,
            f"{value!r} must be 1-63 characters: lowercase letters, digits, hyphens, starting with a letter"
            if pattern is ID_PATTERN
            else f"{value!r} must be 1-63 characters: letters, digits, _ . -, starting with a letter or digit",
        )
    return value


def validate_display_name(value: str, field: str) -> None:
    if len(value) > MAX_DISPLAY_NAME:
        raise invalid_field(field, "at most 200 characters")


def require_display_name(value: str, field: str) -> None:
    """A display name that must not be blank (organizations and sites)."""
    if not value.strip():
        raise invalid_field(field, "is required")
    validate_display_name(value, field)
