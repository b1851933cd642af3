"""The one fetch layer every market source goes through: a rate limit per source (token bucket),
retries with exponential backoff and full jitter on 429 (honouring Retry-After), 5xx, timeouts and
refused connections, conditional re-fetch (If-None-Match / If-Modified-Since; 304 = unchanged),
bounded bodies (also inside a zip), and URLs with their secrets replaced by `***` in every log line
and error.

What an answer means differs per source (ENTSO-E says "no data" in an Acknowledgement, REData in a
502 with an `errors` array), so each client passes a `Dialect`; the rules here are the common ones.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import re
import time
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from services.market.model import Source
from services.market.sources.config import SourcesConfig
from services.market.sources.errors import (
    BadResponse,
    QueryRefused,
    SourceUnavailable,
    TokenRefused,
)

log = logging.getLogger("emma.market.sources")

Sleep = Callable[[float], Awaitable[None]]

# Query parameters that carry a secret (ENTSO-E's token); their values never reach a log or an error.
_SECRET_IN_TEXT = re.compile(r"(securityToken=)[^&\s\"'<>]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the value of every secret query parameter replaced by `***`."""
    return _SECRET_IN_TEXT.sub(r"\1***", text)


def redacted_url(url: httpx.URL) -> str:
    return redact(str(url))


class _RedactSecrets(logging.Filter):
    """httpx logs every request line at INFO with its full URL, and ENTSO-E's token is in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(str(a)) if isinstance(a, str | httpx.URL) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    """Put the redacting filter on httpx's and httpcore's loggers, once."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSecrets) for f in logger.filters):
            logger.addFilter(_RedactSecrets())


class TokenBucket:
    """At most `per_minute` requests in any 60 seconds, with short bursts.

    A bucket of `burst` tokens refilled at (per_minute - burst) / 60 per second lets through at most
    burst + (per_minute - burst) = per_minute requests in any minute: a limit the source counts per
    minute is never exceeded, even right after an idle period.
    """

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.burst = (
            max(1, min(per_minute - 1, burst if burst is not None else per_minute // 40)) if per_minute > 1 else 1
        )
        self.rate = max(per_minute - self.burst, 1) / 60.0
        self._tokens = float(self.burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # one waiter at a time, so waiting requests keep their order
            while True:
                now = self._clock()
                self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                # A tolerance, or rounding could leave 0.999... tokens and sleeps too short to move the clock.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class Validators:
    """What a source said about a document's version, sent back to ask "has it changed?"."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        found = {}
        if self.etag:
            found["If-None-Match"] = self.etag
        if self.last_modified:
            found["If-Modified-Since"] = self.last_modified
        return found


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer of a source, as received (no parsing beyond what the status needs).

    `name` is a file name for the document (`services.market.documents.parse_document(data, name)`);
    `no_data` is the source's own "nothing for this query" (an ENTSO-E Acknowledgement 999, a REData
    no-data error, an ESIOS indicator without values); `not_modified` a 304 to a conditional request,
    with empty `data`. `documents` holds the members of a zipped answer (else the one document).
    """

    source: Source
    name: str
    url: str  # redacted
    status: int
    data: bytes
    content_type: str
    validators: Validators
    attempts: int
    no_data: bool = False
    not_modified: bool = False
    documents: tuple[tuple[str, bytes], ...] = field(default=())


class Dialect:
    """How one source says "no data" and explains a refusal. The defaults suit a plain JSON API."""

    def no_data(self, status: int, content_type: str, body: bytes) -> bool:
        return False

    def explain(self, body: bytes) -> str:
        text = body[:300].decode("utf-8", "replace").strip()
        return redact(" ".join(text.split())) or "(empty body)"


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _is_zip(content_type: str, body: bytes) -> bool:
    return "zip" in content_type or body[:4] == b"PK\x03\x04"


def unzip_documents(source: str, body: bytes, limit: int) -> tuple[tuple[str, bytes], ...]:
    """The members of a zipped answer, reading at most `limit` bytes in all whatever the zip claims."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members: list[tuple[str, bytes]] = []
        left = limit
        for info in archive.infolist():
            if info.is_dir():
                continue
            with archive.open(info) as member:
                data = member.read(left + 1)
            if len(data) > left:
                raise BadResponse(source, f"zipped answer larger than {limit} bytes once unpacked")
            left -= len(data)
            members.append((info.filename, data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise BadResponse(source, f"unreadable zip: {exc}") from None
    if not members:
        raise BadResponse(source, "empty zip")
    return tuple(members)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int
    backoff_s: float
    backoff_max_s: float
    retry_after_max_s: float

    @classmethod
    def of(cls, config: SourcesConfig) -> RetryPolicy:
        return cls(config.retries, config.backoff_s, config.backoff_max_s, config.retry_after_max_s)

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))], so clients retrying together spread out."""
        return rng() * min(self.backoff_max_s, self.backoff_s * 2.0 ** (attempt - 1))


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Fetcher:
    """GET with the common rules; one per source (its own bucket), sharing an httpx client or not."""

    def __init__(
        self,
        source: Source,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        policy: RetryPolicy,
        max_bytes: int,
        dialect: Dialect | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        deadline_s: float = 300.0,
    ) -> None:
        install_log_redaction()
        self.source = source
        self.client = client
        self.bucket = bucket
        self.policy = policy
        self.max_bytes = max_bytes
        self.dialect = dialect or Dialect()
        self._sleep = sleep
        self._rng = rng
        self.deadline_s = deadline_s

    async def get(
        self,
        url: str,
        name: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        validators: Validators | None = None,
    ) -> Fetched:
        request_headers = {**(headers or {}), **(validators.headers() if validators else {})}
        shown = redacted_url(httpx.URL(url, params=dict(params or {})))
        attempt = 0
        while True:
            attempt += 1
            await self.bucket.acquire()
            try:
                try:
                    async with asyncio.timeout(self.deadline_s):
                        return await self._once(url, name, params, request_headers, validators, attempt, shown)
                except TimeoutError:
                    raise _Retry(f"no complete answer within {self.deadline_s:g} s") from None
            except _Retry as retry:
                if attempt > self.policy.retries:
                    raise SourceUnavailable(
                        self.source.value, f"{retry.reason} after {attempt} attempts ({shown})", attempt
                    ) from None
                delay = retry.delay if retry.delay is not None else self.policy.backoff(attempt, self._rng)
                log.warning(
                    "market source retry",
                    extra={
                        "source": self.source.value,
                        "url": shown,
                        "attempt": attempt,
                        "reason": retry.reason,
                        "delay_s": round(delay, 3),
                    },
                )
                await self._sleep(delay)

    async def _once(
        self,
        url: str,
        name: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        validators: Validators | None,
        attempt: int,
        shown: str,
    ) -> Fetched:
        source = self.source.value
        try:
            async with self.client.stream("GET", url, params=params, headers=headers) as response:
                body = await self._read(response, shown)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection failed ({type(exc).__name__}: {redact(str(exc))})") from None
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        got = Validators(response.headers.get("etag"), response.headers.get("last-modified"))
        if status == 304 and validators is not None:
            return Fetched(
                self.source,
                name,
                shown,
                status,
                b"",
                content_type,
                Validators(got.etag or validators.etag, got.last_modified or validators.last_modified),
                attempt,
                not_modified=True,
            )
        if self.dialect.no_data(status, content_type, body):
            return Fetched(
                self.source,
                name,
                shown,
                status,
                body,
                content_type,
                got,
                attempt,
                no_data=True,
                documents=((name, body),),
            )
        if 200 <= status < 300:
            documents = (
                unzip_documents(source, body, self.max_bytes) if _is_zip(content_type, body) else ((name, body),)
            )
            return Fetched(self.source, name, shown, status, body, content_type, got, attempt, documents=documents)
        if status in (401, 403):
            raise TokenRefused(source, f"credentials refused with HTTP {status}: {self.dialect.explain(body)}")
        if status == 429:
            wait = retry_after_s(response.headers.get("retry-after"))
            if wait is not None and wait > self.policy.retry_after_max_s:
                raise SourceUnavailable(source, f"rate limited for {wait:.0f} s ({shown})", attempt)
            raise _Retry("HTTP 429 (rate limited)", wait)
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        raise QueryRefused(source, f"HTTP {status} for {shown}: {self.dialect.explain(body)}")

    async def _read(self, response: httpx.Response, shown: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise BadResponse(self.source.value, f"answer of {declared} bytes is over {self.max_bytes} ({shown})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():  # decoded: a gzip bomb is counted unpacked
            size += len(chunk)
            if size > self.max_bytes:
                raise BadResponse(self.source.value, f"answer over {self.max_bytes} bytes ({shown})")
            chunks.append(chunk)
        return b"".join(chunks)


def new_http_client(config: SourcesConfig) -> httpx.AsyncClient:
    """The httpx client of the sources: the configured timeouts, no redirects to elsewhere followed."""
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, headers={"User-Agent": "EMMA market sources"})
