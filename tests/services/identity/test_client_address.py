"""Which client address login limits and audit rows use, with and without the gateway in front."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from services.identity.config import AuthConfig
from services.identity.interceptor import client_address


@dataclasses.dataclass
class _Peer:
    """The two things client_address reads from a grpc.aio ServicerContext."""

    address: str
    forwarded: str = ""

    def peer(self) -> str:
        return self.address

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("x-forwarded-for", self.forwarded)] if self.forwarded else []


def _config(env: dict[str, str]) -> AuthConfig:
    base = {"EMMA_JWT_SIGNING_KEY": "k" * 32, "EMMA_PSEUDONYM_KEY": "p" * 32}
    return AuthConfig.from_env(Path("/nonexistent"), {**base, **env})


def test_client_address_from_the_peer_or_a_trusted_gateway() -> None:
    plain = _config({})
    behind = _config({"EMMA_TRUST_FORWARDED_FOR": "true"})
    only_gateway = _config({"EMMA_TRUST_FORWARDED_FOR": "true", "EMMA_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    ctx: Any
    ctx = _Peer("ipv4:192.0.2.7:50123", "203.0.113.9")
    assert client_address(ctx, plain) == "192.0.2.7"  # a client cannot choose its address
    assert client_address(ctx, behind) == "203.0.113.9"
    assert client_address(ctx, only_gateway) == "192.0.2.7"  # not from the gateway: ignored
    ctx = _Peer("ipv4:10.1.2.3:40000", "198.51.100.1, 203.0.113.9")
    assert client_address(ctx, only_gateway) == "203.0.113.9"  # the entry the gateway added
    ctx = _Peer("ipv6:[::1]:40000", "203.0.113.10")
    assert client_address(ctx, plain) == "::1"
    assert client_address(ctx, only_gateway) == "203.0.113.10"
