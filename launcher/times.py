"""How the operator commands print a time: ISO 8601 in UTC with a Z, the form the REST gateway uses."""

from __future__ import annotations

from datetime import datetime


def utc_text(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
