"""Identity and authorization settings, from EMMA_* environment variables (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.env import env_flag, env_float
from services.errors import ConfigError
from services.platform.secrets import local_secret

log = logging.getLogger("emma.auth")

MIN_KEY_BYTES = 32


def _networks(env: Mapping[str, str], name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in env.get(name, "").split(","):
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name}: {item.strip()!r} is not an IP address or network") from None
    return tuple(out)


def _key(env: Mapping[str, str], name: str, state_dir: Path, secret_name: str) -> bytes:
    raw = env.get(name, "")
    if raw:
        if len(raw.encode()) < MIN_KEY_BYTES:
            raise ConfigError(f"{name} must be at least {MIN_KEY_BYTES} bytes long")
        return raw.encode()
    log.warning(
        "%s is not set: using the key generated in %s (fine on one machine; every replica of a "
        "deployment needs the same key from the environment)",
        name,
        state_dir / "secrets.json",
    )
    return local_secret(state_dir, secret_name).encode()


@dataclass(frozen=True)
class AuthConfig:
    """Token lifetimes, login limits, key material. Keys never come from the repository."""

    jwt_signing_key: bytes
    # Older signing keys still accepted for verification during a key rotation.
    jwt_verify_keys: tuple[bytes, ...] = ()
    pseudonym_key: bytes = b""
    access_token_ttl_s: float = 900.0  # 15 minutes
    refresh_token_ttl_s: float = 7 * 86400.0  # 7 days
    login_window_s: float = 900.0
    # Failures of one account from one client address: the budget that refuses a guesser.
    login_max_failures_per_user: int = 5
    # Failures of one client address, whatever the accounts.
    login_max_failures_per_address: int = 50
    # Failures of one account from all addresses together: past it, only addresses the account has
    # logged in from before may still try, so a spread-out attack is slowed without locking the
    # owner out (docs/security.md, "Failed logins").
    login_max_failures_per_account: int = 50
    # How long a successful login makes its address "known" to the account for the budget above.
    login_known_address_s: float = 90 * 86400.0
    # Revocation arrives by NOTIFY within milliseconds; cached sessions are re-read at least this
    # often anyway, a safety net for a notification lost with a dropped connection.
    auth_cache_ttl_s: float = 30.0
    # Behind the REST gateway the peer is the gateway; trust its x-forwarded-for then.
    trust_forwarded_for: bool = False
    # Peers whose x-forwarded-for is believed (the gateway's addresses); empty: any peer.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4

    @classmethod
    def argon2_from_env(cls, env: Mapping[str, str] = os.environ) -> tuple[int, int, int]:
        """(time cost, memory KiB, parallelism) of new password hashes, without touching any key."""
        return (
            int(env_float(env, "EMMA_ARGON2_TIME_COST", cls.argon2_time_cost, 1)),
            int(env_float(env, "EMMA_ARGON2_MEMORY_KIB", cls.argon2_memory_kib, 8)),
            int(env_float(env, "EMMA_ARGON2_PARALLELISM", cls.argon2_parallelism, 1)),
        )

    @classmethod
    def from_env(cls, state_dir: Path, env: Mapping[str, str] = os.environ) -> AuthConfig:
        argon2 = cls.argon2_from_env(env)
        previous = tuple(k.encode() for k in env.get("EMMA_JWT_PREVIOUS_SIGNING_KEYS", "").split(",") if k)
        return cls(
            jwt_signing_key=_key(env, "EMMA_JWT_SIGNING_KEY", state_dir, "jwt_signing_key"),
            jwt_verify_keys=previous,
            pseudonym_key=_key(env, "EMMA_PSEUDONYM_KEY", state_dir, "pseudonym_key"),
            access_token_ttl_s=env_float(env, "EMMA_ACCESS_TOKEN_TTL_S", cls.access_token_ttl_s, 1),
            refresh_token_ttl_s=env_float(env, "EMMA_REFRESH_TOKEN_TTL_S", cls.refresh_token_ttl_s, 60),
            login_window_s=env_float(env, "EMMA_LOGIN_WINDOW_S", cls.login_window_s, 1),
            login_max_failures_per_user=int(
                env_float(env, "EMMA_LOGIN_MAX_FAILURES_PER_USER", cls.login_max_failures_per_user, 1)
            ),
            login_max_failures_per_address=int(
                env_float(env, "EMMA_LOGIN_MAX_FAILURES_PER_ADDRESS", cls.login_max_failures_per_address, 1)
            ),
            login_max_failures_per_account=int(
                env_float(env, "EMMA_LOGIN_MAX_FAILURES_PER_ACCOUNT", cls.login_max_failures_per_account, 1)
            ),
            login_known_address_s=env_float(env, "EMMA_LOGIN_KNOWN_ADDRESS_S", cls.login_known_address_s, 0),
            auth_cache_ttl_s=env_float(env, "EMMA_AUTH_CACHE_TTL_S", cls.auth_cache_ttl_s, 0),
            trust_forwarded_for=env_flag(env, "EMMA_TRUST_FORWARDED_FOR"),
            trusted_proxies=_networks(env, "EMMA_TRUSTED_PROXIES"),
            argon2_time_cost=argon2[0],
            argon2_memory_kib=argon2[1],
            argon2_parallelism=argon2[2],
        )
