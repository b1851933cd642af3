"""The root of every error EMMA raises on purpose; each package derives its own root from it."""

from __future__ import annotations


class EmmaError(Exception):
    """Root of every deliberate EMMA error (services.errors.ServiceError, gateway's, the edge's)."""


class ConfigError(EmmaError):
    """An EMMA_* variable, a command-line value or a configuration file is invalid; the message names it.

    Packages with a configuration of their own subclass it next to their own root (GatewayConfigError,
    the edge's SiteConfigError), so `except ConfigError` catches a bad setting wherever it was read.
    """
