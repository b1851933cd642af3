"""The market sources' settings, read from EMMA_* variables through core.env.

Tokens are never part of the dataclass's repr, so logging a config cannot leak them. A base URL must be
https, except on the loopback interface (the replay server): a plain-http URL to another host would send
the ENTSO-E token (a query parameter) and the ESIOS key in clear.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from core.env import checked_base_url, env_float, env_int
from services.market.sources.errors import SourceConfigError

ENTSOE_URL = "https://web-api.tp.entsoe.eu/api"
REDATA_URL = "https://apidatos.ree.es"
ESIOS_URL = "https://api.esios.ree.es"


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    """How EMMA talks to ENTSO-E, REE REData and ESIOS (docs/configuration.md lists the variables)."""

    entsoe_token: str = field(default="", repr=False)
    esios_token: str = field(default="", repr=False)
    entsoe_url: str = ENTSOE_URL
    redata_url: str = REDATA_URL
    esios_url: str = ESIOS_URL
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    # The longest one attempt may take in all: the read timeout is per read, so a server sending a
    # byte now and then could otherwise hold a request (and a worker) for ever.
    request_deadline_s: float = 300.0
    # Attempts after the first one, for 429, 5xx, timeouts and refused connections.
    retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    # A 429 asking us to wait longer than this fails at once instead of holding a worker that long.
    retry_after_max_s: float = 600.0
    # ENTSO-E allows 400 requests a minute per user; REE publishes no number and asks for restraint.
    entsoe_per_minute: int = 400
    ree_per_minute: int = 60
    # Largest answer read (after decompression, and for a zip the sum of its members).
    max_response_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SourcesConfig:
        env = os.environ if env is None else env
        num = partial(env_float, env, error=SourceConfigError)
        whole = partial(env_int, env, error=SourceConfigError)
        return cls(
            entsoe_token=env.get("EMMA_ENTSOE_TOKEN", "").strip(),
            esios_token=env.get("EMMA_ESIOS_TOKEN", "").strip(),
            entsoe_url=checked_base_url("EMMA_ENTSOE_URL", env.get("EMMA_ENTSOE_URL") or ENTSOE_URL, SourceConfigError),
            redata_url=checked_base_url("EMMA_REDATA_URL", env.get("EMMA_REDATA_URL") or REDATA_URL, SourceConfigError),
            esios_url=checked_base_url("EMMA_ESIOS_URL", env.get("EMMA_ESIOS_URL") or ESIOS_URL, SourceConfigError),
            connect_timeout_s=num("EMMA_MARKET_CONNECT_TIMEOUT_S", 10.0, minimum=0.001),
            read_timeout_s=num("EMMA_MARKET_READ_TIMEOUT_S", 30.0, minimum=0.001),
            request_deadline_s=num("EMMA_MARKET_REQUEST_DEADLINE_S", 300.0, minimum=0.001),
            retries=whole("EMMA_MARKET_RETRIES", 4, minimum=0, maximum=20),
            backoff_s=num("EMMA_MARKET_BACKOFF_S", 1.0),
            backoff_max_s=num("EMMA_MARKET_BACKOFF_MAX_S", 60.0),
            retry_after_max_s=num("EMMA_MARKET_RETRY_AFTER_MAX_S", 600.0),
            entsoe_per_minute=whole("EMMA_ENTSOE_REQUESTS_PER_MINUTE", 400, minimum=1),
            ree_per_minute=whole("EMMA_REE_REQUESTS_PER_MINUTE", 60, minimum=1),
            max_response_bytes=whole("EMMA_MARKET_MAX_RESPONSE_BYTES", 64 * 1024 * 1024, minimum=1024),
        )

    def __post_init__(self) -> None:
        for name, url in (
            ("EMMA_ENTSOE_URL", self.entsoe_url),
            ("EMMA_REDATA_URL", self.redata_url),
            ("EMMA_ESIOS_URL", self.esios_url),
        ):
            checked_base_url(name, url, SourceConfigError)
