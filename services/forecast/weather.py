"""Client of Open-Meteo's forecast API (https://open-meteo.com/en/docs, no key needed): hourly GHI,
DNI, DHI, air temperature and cloud cover at a place, as a WeatherSeries in UTC.

429, 5xx, timeouts and refused connections are retried with exponential backoff and full jitter
(the same rule as the market sources' fetch layer); what is left after the retries is a
WeatherError with retry=True. A refused query (Open-Meteo answers 400 with {"error": true,
"reason": ...}) or an unreadable answer is a WeatherError with retry=False.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx

from core.env import checked_base_url, env_float, env_int
from services.forecast.errors import WeatherConfigError, WeatherError
from services.forecast.model import WeatherSeries
from services.platform.runtime import Runtime

log = logging.getLogger("emma.forecast.weather")

OPEN_METEO_URL = "https://api.open-meteo.com"
SOURCE = "open-meteo"
HOURLY = ("shortwave_radiation", "direct_normal_irradiance", "diffuse_radiation", "temperature_2m", "cloud_cover")
# Open-Meteo forecasts up to 16 days.
MAX_HOURS = 16 * 24
# Time zones are within UTC-12..UTC+14; ISO 8601 allows up to 18 hours either way.
MAX_UTC_OFFSET_S = 18 * 3600

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class WeatherConfig:
    """How EMMA asks Open-Meteo (EMMA_WEATHER_* variables)."""

    url: str = OPEN_METEO_URL
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    retries: int = 3  # attempts after the first, for 429/5xx/timeouts/refused connections
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_response_bytes: int = 4 * 1024 * 1024  # 16 days x 5 variables is ~40 kB

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WeatherConfig:
        env = os.environ if env is None else env
        num = partial(env_float, env, error=WeatherConfigError)
        whole = partial(env_int, env, error=WeatherConfigError)
        return cls(
            url=checked_base_url("EMMA_WEATHER_URL", env.get("EMMA_WEATHER_URL") or OPEN_METEO_URL, WeatherConfigError),
            connect_timeout_s=num("EMMA_WEATHER_CONNECT_TIMEOUT_S", 5.0, minimum=0.001),
            read_timeout_s=num("EMMA_WEATHER_READ_TIMEOUT_S", 20.0, minimum=0.001),
            retries=whole("EMMA_WEATHER_RETRIES", 3, minimum=0, maximum=10),
            backoff_s=num("EMMA_WEATHER_BACKOFF_S", 1.0),
            backoff_max_s=num("EMMA_WEATHER_BACKOFF_MAX_S", 30.0),
        )


class _Retry(Exception):
    pass


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _utc_time(text: str, offset_s: int) -> datetime:
    """A time of the answer in UTC: local wall time minus the answer's offset, or, when the time
    states its own offset, that one (asked with timezone=GMT, Open-Meteo sends naive UTC times)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is not None:
        return when.astimezone(UTC)
    return (when - timedelta(seconds=offset_s)).replace(tzinfo=UTC)


def parse_forecast(body: bytes, fetched_at: datetime) -> WeatherSeries:
    """A WeatherSeries from an Open-Meteo /v1/forecast JSON answer; WeatherError(retry=False) if unreadable."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WeatherError("open-meteo: answer is not JSON", retry=False) from None
    if not isinstance(data, dict):
        raise WeatherError("open-meteo: answer is not a JSON object", retry=False)
    if data.get("error") is True:
        raise WeatherError(f"open-meteo refused the query: {str(data.get('reason'))[:300]}", retry=False)
    hourly = data.get("hourly")
    offset = data.get("utc_offset_seconds", 0)
    if not isinstance(hourly, dict) or not isinstance(hourly.get("time"), list):
        raise WeatherError("open-meteo: answer without an hourly time series", retry=False)
    # An offset beyond any time zone's (or a bool, which JSON's true would pass as 1) is a broken
    # answer; unchecked, a huge one overflowed timedelta and escaped as an internal error.
    if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > MAX_UTC_OFFSET_S:
        raise WeatherError(f"open-meteo: utc_offset_seconds {str(offset)[:40]} is not a UTC offset", retry=False)
    times_raw: list[Any] = hourly["time"]
    try:
        times = tuple(_utc_time(str(t), offset) for t in times_raw)
    except (ValueError, OverflowError):  # unreadable, or moved before year 1 or after 9999 by the offset
        raise WeatherError("open-meteo: unreadable time in the answer", retry=False) from None

    def column(name: str) -> tuple[float | None, ...]:
        values = hourly.get(name)
        if values is None:
            return (None,) * len(times)
        if not isinstance(values, list) or len(values) != len(times):
            raise WeatherError(f"open-meteo: {name} does not have one value per time", retry=False)
        return tuple(_number(v) for v in values)

    try:
        return WeatherSeries(
            times=times,
            ghi_w_m2=column("shortwave_radiation"),
            dni_w_m2=column("direct_normal_irradiance"),
            dhi_w_m2=column("diffuse_radiation"),
            temp_air_c=column("temperature_2m"),
            cloud_cover_pct=column("cloud_cover"),
            source=SOURCE,
            fetched_at=fetched_at,
        )
    except WeatherError:
        raise
    except Exception as exc:  # the series' own validation (order of times)
        raise WeatherError(f"open-meteo: inconsistent answer: {exc}", retry=False) from None


class OpenMeteoClient:
    """`await client.fetch(lat, lon, start, hours)`; owns its httpx client unless given one."""

    def __init__(
        self,
        config: WeatherConfig,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": "EMMA forecast"},
        )
        self._sleep = sleep
        self._rng = rng

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def fetch(self, latitude: float, longitude: float, start: datetime, hours: int) -> WeatherSeries:
        """Hourly weather covering [start, start + hours) (whole UTC days are asked for)."""
        if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
            raise WeatherError(f"open-meteo: no such place ({latitude}, {longitude})", retry=False)
        if not 1 <= hours <= MAX_HOURS:
            raise WeatherError(f"open-meteo forecasts 1..{MAX_HOURS} hours, asked {hours}", retry=False)
        if start.tzinfo is None:
            raise WeatherError("open-meteo: start must be timezone-aware", retry=False)
        first = start.astimezone(UTC)
        # The last interval's label is its end, so the end date covers start + hours inclusive.
        last = first + timedelta(hours=hours)
        params = {
            "latitude": f"{latitude:.4f}",
            "longitude": f"{longitude:.4f}",
            "hourly": ",".join(HOURLY),
            "timezone": "GMT",
            "start_date": first.date().isoformat(),
            "end_date": last.date().isoformat(),
        }
        url = f"{self.config.url}/v1/forecast"
        attempt = 0
        while True:
            attempt += 1
            try:
                body = await self._once(url, params)
                return parse_forecast(body, datetime.now(UTC))
            except _Retry as retry:
                if attempt > self.config.retries:
                    raise WeatherError(
                        f"open-meteo unavailable: {retry} after {attempt} attempts", retry=True
                    ) from None
                # Full jitter: uniform in [0, min(max, base * 2^(attempt-1))], so clients spread out.
                delay = self._rng() * min(self.config.backoff_max_s, self.config.backoff_s * 2.0 ** (attempt - 1))
                log.warning("weather source retry", extra={"attempt": attempt, "reason": str(retry), "delay_s": delay})
                await self._sleep(delay)

    async def _once(self, url: str, params: Mapping[str, str]) -> bytes:
        try:
            async with self._client.stream("GET", url, params=params) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.config.max_response_bytes:
                        raise WeatherError(
                            f"open-meteo: answer over {self.config.max_response_bytes} bytes", retry=False
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection failed ({type(exc).__name__})") from None
        body = b"".join(chunks)
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}")
        if status != 200:
            try:
                reason = json.loads(body).get("reason")
            except (ValueError, AttributeError):
                reason = body[:200].decode("utf-8", "replace")
            raise WeatherError(f"open-meteo refused the query with HTTP {status}: {reason}", retry=False)
        return body


class SharedWeather:
    """One OpenMeteoClient for all of a process's runs: building an httpx client (its TLS context,
    its connection pool) for every run was a fifth of a 1,000-site round's CPU (docs/performance.md).

    The client is made on the first fetch, so in the event loop that serves the runs; `aclose` closes
    it (a later fetch would make a new one). `of(runtime)` gives the runtime's one instance, closed
    with the process (Runtime.on_close)."""

    def __init__(self, config: WeatherConfig) -> None:
        self.config = config
        self._client: OpenMeteoClient | None = None

    @classmethod
    def of(cls, runtime: Runtime, config: WeatherConfig) -> SharedWeather:
        """The instance the servicer and the scheduler of one process share (the first one registered
        with the runtime's closers, so it is also closed with it)."""
        for close in runtime.closers:
            owner = getattr(close, "__self__", None)
            if isinstance(owner, SharedWeather):
                return owner
        shared = cls(config)
        runtime.on_close(shared.aclose)
        return shared

    async def fetch(self, latitude: float, longitude: float, start: datetime, hours: int) -> WeatherSeries:
        if self._client is None:
            self._client = OpenMeteoClient(self.config)
        return await self._client.fetch(latitude, longitude, start, hours)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
