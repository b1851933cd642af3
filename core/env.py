"""Reading typed values from EMMA_* environment variables, with errors that name the variable.

Every configuration dataclass (platform, auth, gateway) reads through these, so a bad value is
reported the same way everywhere: one line, the variable, the value, what was expected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from core.errors import ConfigError


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    minimum: int = 0,
    maximum: int | None = None,
    error: type[Exception] = ConfigError,
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise error(f"{name}={value} must be {bound}")
    return value


def env_float(
    env: Mapping[str, str], name: str, default: float, minimum: float = 0.0, error: type[Exception] = ConfigError
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also refuses NaN
        raise error(f"{name}={value} must be at least {minimum}")
    return value


def env_flag(env: Mapping[str, str], name: str, default: bool = False, error: type[Exception] = ConfigError) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise error(f"{name}={raw!r} is not a boolean (true/false)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_base_url(name: str, value: str, error: type[Exception] = ConfigError) -> str:
    """An outside API's base URL (from variable `name`) without a trailing slash: https, or plain http on
    the loopback interface only (a local replay server); a plain-http URL to another host would send the
    API's token in clear."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"{name}={value!r} is not an http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise error(f"{name}={value!r} must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise error(f"{name}={value!r}: plain http is allowed only on the loopback interface")
    return value.rstrip("/")
