"""Webhook deliveries: the URL check against server-side request forgery, the signature, the POST.

The signature is HMAC-SHA256 keyed with the channel's secret over "{timestamp}.{body}": covering the
timestamp lets a receiver refuse a replay of an old request, covering the exact body bytes lets it
verify before parsing. Redirects are never followed: a public URL could redirect to an internal one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
import urllib.parse

import httpx

from services.alarm.errors import AlarmError

SIGNATURE_HEADER = "X-Emma-Signature"
TIMESTAMP_HEADER = "X-Emma-Timestamp"
DELIVERY_HEADER = "X-Emma-Delivery"
MAX_URL_CHARS = 2000


class UnsafeTarget(AlarmError):
    """A webhook URL refused by the SSRF guard or malformed (the message says why)."""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def parse_url(url: str, allow_private: bool) -> urllib.parse.SplitResult:
    """The URL's parts once its form is acceptable (no resolution yet)."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeTarget(f"at most {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeTarget(f"must be an {' or '.join(schemes)} URL")
    if not parts.hostname:
        raise UnsafeTarget("has no host")
    if parts.username or parts.password:
        raise UnsafeTarget("must not carry credentials; the signature authenticates the sender")
    try:
        _ = parts.port
    except ValueError:
        raise UnsafeTarget("has an invalid port") from None
    return parts


async def check_target(url: str, allow_private: bool) -> None:
    """Raises UnsafeTarget unless the URL may be posted to: in production mode (allow_private false)
    every address its host resolves to must be public."""
    parts = parse_url(url, allow_private)
    if allow_private:
        return
    host = parts.hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnsafeTarget(f"host {host!r} does not resolve ({e.strerror})") from None
    for info in infos:
        address = str(info[4][0])
        if not _public(address):
            raise UnsafeTarget(f"host {host!r} resolves to {address}, a loopback, private or reserved address")


async def post(
    client: httpx.AsyncClient, url: str, secret: str, body: bytes, delivery_id: int, allow_private: bool
) -> str:
    """One attempt; "" when the receiver took it (2xx), else why it failed."""
    try:
        await check_target(url, allow_private)
    except UnsafeTarget as e:
        return f"refused: {e}"
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: signature(secret, stamp, body),
        DELIVERY_HEADER: str(delivery_id),
        "User-Agent": "emma-alarm-webhook/1",
    }
    try:
        answer = await client.post(url, content=body, headers=headers, follow_redirects=False)
    except httpx.TimeoutException:
        return "timed out"
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"[:500] or type(e).__name__
    if 200 <= answer.status_code < 300:
        return ""
    return f"HTTP {answer.status_code}"
