"""Health index 0-100 per device and site, and battery projections (docs/alarms.md, "Health index").

Both are computed on each call from what is stored now (the newest samples, the state-of-charge
history, the alarms), so they are never older than the telemetry: "continuous" without a job that
could fall behind. The scoring functions are pure and documented with their constants; the weights of
the factors a device has data for are renormalised to add up to 1.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2, types_pb2
from emma.edge.v1 import edge_link_pb2

from services.errors import ApiError, invalid_field, not_found
from services.names import DeviceName, SiteName, parse_device, parse_site
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import edge_inventory, edge_pk, edges_of_site, site_profile
from services.telemetry import ChannelCursor, last_batch_times, latest_times, latest_value, samples_after

# Data freshness: full marks up to FRESH_S without a sample, none from STALE_S on, linear between.
FRESH_S, STALE_S = 60.0, 900.0
# Battery temperature (degC): full marks inside the comfort band, none at the cold or hot limit.
COMFORT_LOW, COMFORT_HIGH, COLD_LIMIT, HOT_LIMIT = 15.0, 35.0, -10.0, 55.0
# State-of-charge window use: time spent below SOC_LOW or above SOC_HIGH over SOC_HISTORY wears cells.
SOC_LOW, SOC_HIGH = 5.0, 95.0
SOC_HISTORY = dt.timedelta(hours=24)
SOC_HISTORY_SAMPLES = 20_000
# Alarms: an open critical alarm costs 40 points, an open warning 20, each alarm raised in the last
# ALARM_HISTORY 5 (a device that keeps alarming is not healthy even when it is quiet right now).
OPEN_CRITICAL_COST, OPEN_WARNING_COST, RAISED_COST = 40.0, 20.0, 5.0
ALARM_HISTORY = dt.timedelta(days=7)
# Round-trip efficiency over EFFICIENCY_WINDOW from the battery's ActivePower (positive discharging)
# and, when reported, StoredEnergy: full marks from EFFICIENCY_GOOD, none at EFFICIENCY_POOR or below.
# Judged only once at least EFFICIENCY_MIN_WH went in and came out: a battery that hardly cycled says
# nothing about its losses. Two samples further apart than EFFICIENCY_MAX_GAP are a gap, not a step.
EFFICIENCY_WINDOW = dt.timedelta(hours=24)
EFFICIENCY_SAMPLES = 50_000
EFFICIENCY_GOOD, EFFICIENCY_POOR = 0.90, 0.70
EFFICIENCY_MIN_WH = 100.0
EFFICIENCY_MAX_GAP = dt.timedelta(minutes=5)
# An edge counts as reporting when its newest batch arrived within this.
EDGE_REPORTING = dt.timedelta(minutes=5)

BATTERY_WEIGHTS = {"data_freshness": 0.15, "alarms": 0.25, "temperature": 0.2, "soc_window": 0.2, "efficiency": 0.2}
DEVICE_WEIGHTS = {"data_freshness": 0.4, "alarms": 0.6}
SITE_WEIGHTS = {"devices": 0.5, "worst_device": 0.3, "edges_reporting": 0.2}
TEMPERATURE_CHANNELS = ("CellTemperature", "Temperature", "CellTemperatureMax")

DEFAULT_WINDOW = dt.timedelta(minutes=15)
MIN_WINDOW, MAX_WINDOW = dt.timedelta(seconds=60), dt.timedelta(days=1)
MIN_FIT_SAMPLES = 3


def freshness_score(age_s: float) -> float:
    if age_s <= FRESH_S:
        return 100.0
    if age_s >= STALE_S:
        return 0.0
    return 100.0 * (STALE_S - age_s) / (STALE_S - FRESH_S)


def temperature_score(celsius: float) -> float:
    if COMFORT_LOW <= celsius <= COMFORT_HIGH:
        return 100.0
    if celsius < COMFORT_LOW:
        return max(0.0, 100.0 * (celsius - COLD_LIMIT) / (COMFORT_LOW - COLD_LIMIT))
    return max(0.0, 100.0 * (HOT_LIMIT - celsius) / (HOT_LIMIT - COMFORT_HIGH))


def soc_window_score(socs: Sequence[float]) -> float:
    outside = sum(1 for s in socs if s < SOC_LOW or s > SOC_HIGH)
    return 100.0 * (1 - outside / len(socs))


@dataclass(frozen=True)
class Efficiency:
    """energy_in_wh: AC energy charged; energy_out_wh: AC energy discharged; stored_change_wh: StoredEnergy
    at the end minus at the start (0 when not reported); ratio: see round_trip_efficiency."""

    energy_in_wh: float
    energy_out_wh: float
    stored_change_wh: float
    ratio: float


def round_trip_efficiency(
    power: Sequence[tuple[dt.datetime, float]], stored: Sequence[tuple[dt.datetime, float]] = ()
) -> Efficiency | None:
    """Energy out / energy in over the samples, None when too little energy moved to tell.

    E_in and E_out integrate ActivePower (W, positive discharging) held from each sample to the next
    (a gap longer than EFFICIENCY_MAX_GAP is not integrated): E_in the charging part, E_out the
    discharging part, in Wh. A window rarely starts and ends at the same state of charge, so the change
    of StoredEnergy within it, dE, is settled first: energy left in the battery counts as come out
    (ratio = (E_out + dE) / E_in when dE >= 0), energy taken from what was stored before counts as gone
    in (ratio = E_out / (E_in - dE) when dE < 0). With dE = 0 this is E_out / E_in exactly."""
    e_in = e_out = 0.0
    for (t0, p), (t1, _) in itertools.pairwise(power):
        span = t1 - t0
        if span > EFFICIENCY_MAX_GAP:
            continue
        wh = p * span.total_seconds() / 3600
        if wh >= 0:
            e_out += wh
        else:
            e_in -= wh
    inside = [v for t, v in stored if power and power[0][0] <= t <= power[-1][0]]
    change = inside[-1] - inside[0] if len(inside) >= 2 else 0.0
    if min(e_in, e_out) < EFFICIENCY_MIN_WH:
        return None
    ratio = (e_out + change) / e_in if change >= 0 else e_out / (e_in - change)
    return Efficiency(e_in, e_out, change, ratio)


def efficiency_score(ratio: float) -> float:
    if ratio >= EFFICIENCY_GOOD:
        return 100.0
    return max(0.0, 100.0 * (ratio - EFFICIENCY_POOR) / (EFFICIENCY_GOOD - EFFICIENCY_POOR))


def alarm_score(open_critical: int, open_warning: int, raised_recently: int) -> float:
    cost = OPEN_CRITICAL_COST * open_critical + OPEN_WARNING_COST * open_warning + RAISED_COST * raised_recently
    return max(0.0, 100.0 - cost)


def combine(name: str, factors: dict[str, tuple[float, str]], weights: dict[str, float]) -> pb.Health:
    """The weighted sum of the factors that have data; their weights renormalised to add up to 1."""
    present = {f: weights[f] for f in factors if f in weights}
    total = sum(present.values())
    health = pb.Health(name=name, compute_time=timestamp(dt.datetime.now(dt.UTC)))
    score = 0.0
    for factor, weight in present.items():
        value, detail = factors[factor]
        share = weight / total
        score += share * value
        health.factors.append(pb.HealthFactor(factor=factor, score=round(value, 1), weight=share, detail=detail))
    health.score = round(score, 1)
    return health


@dataclass(frozen=True)
class _Device:
    name: DeviceName
    pk: int
    item: edge_link_pb2.DeviceInventoryItem

    def has(self, channel: str) -> bool:
        return any(c.name == channel for c in self.item.channels)

    @property
    def is_battery(self) -> bool:
        return self.item.kind == types_pb2.DEVICE_KIND_BATTERY or self.has("Soc")


def _strip(name: str, suffix: str, field: str = "name") -> str:
    if not name.endswith("/" + suffix):
        raise invalid_field(field, f"{name!r} does not end in /{suffix}")
    return name.removesuffix("/" + suffix)


async def _device(conn: Conn, name: DeviceName) -> _Device:
    pk = await edge_pk(conn, name.edge)
    if pk is not None:
        for item in await edge_inventory(conn, pk):
            if item.device_id == name.device:
                return _Device(name, pk, item)
    raise not_found(str(name))


async def _alarm_counts(conn: Conn, org: str, prefix: str, now: dt.datetime) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE clear_time IS NULL AND severity = 2) AS critical,
                  count(*) FILTER (WHERE clear_time IS NULL AND severity = 1) AS warning,
                  count(*) FILTER (WHERE clear_time IS NOT NULL) AS recent
           FROM alarm.alarms
           WHERE org_id = $1 AND starts_with(source, $2) AND (clear_time IS NULL OR raise_time >= $3)""",
        org,
        prefix,
        now - ALARM_HISTORY,
    )
    assert row is not None
    return int(row["critical"]), int(row["warning"]), int(row["recent"])


async def _device_health(conn: Conn, device: _Device, now: dt.datetime) -> pb.Health:
    d = device.item.device_id
    factors: dict[str, tuple[float, str]] = {}
    times = await latest_times(conn, [(device.pk, f"{d}/{c.name}") for c in device.item.channels])
    if times:
        age = (now - max(times.values())).total_seconds()
        factors["data_freshness"] = (freshness_score(age), f"newest sample {age:.0f} s old")
    else:
        factors["data_freshness"] = (0.0, "no sample yet")
    critical, warning, recent = await _alarm_counts(conn, device.name.edge.org, f"{device.name}/channels/", now)
    factors["alarms"] = (
        alarm_score(critical, warning, recent),
        f"{critical} critical and {warning} warning alarms open, {recent} cleared in the last "
        f"{ALARM_HISTORY.days} days",
    )
    weights = DEVICE_WEIGHTS
    if device.is_battery:
        weights = BATTERY_WEIGHTS
        # By what the device reports, not only what it declared: a BMS may send its temperature as a
        # plain measurement outside its declared channels.
        for channel in TEMPERATURE_CHANNELS:
            found = await latest_value(conn, device.pk, f"{d}/{channel}")
            if found is not None:
                factors["temperature"] = (temperature_score(found[1]), f"{channel} {found[1]:g} degC")
                break
        socs = [
            s.value
            for s in await samples_after(
                conn, [ChannelCursor(device.pk, f"{d}/Soc", now - SOC_HISTORY)], SOC_HISTORY_SAMPLES
            )
        ]
        if socs:
            factors["soc_window"] = (
                soc_window_score(socs),
                f"{len(socs)} samples in {SOC_HISTORY.total_seconds() / 3600:g} h, "
                f"{sum(1 for s in socs if s < SOC_LOW or s > SOC_HIGH)} below {SOC_LOW:g} % or above {SOC_HIGH:g} %",
            )
        since = now - EFFICIENCY_WINDOW
        read = await samples_after(
            conn,
            [ChannelCursor(device.pk, f"{d}/ActivePower", since), ChannelCursor(device.pk, f"{d}/StoredEnergy", since)],
            EFFICIENCY_SAMPLES,
        )
        power = [(x.time, x.value) for x in read if x.channel.endswith("/ActivePower")]
        stored = [(x.time, x.value) for x in read if x.channel.endswith("/StoredEnergy")]
        eff = round_trip_efficiency(power, stored)
        if eff is not None:
            hours = (power[-1][0] - power[0][0]).total_seconds() / 3600
            factors["efficiency"] = (
                efficiency_score(eff.ratio),
                f"{eff.ratio * 100:.1f} % round trip over {hours:.1f} h: {eff.energy_out_wh:.0f} Wh out, "
                f"{eff.energy_in_wh:.0f} Wh in, stored energy {eff.stored_change_wh:+.0f} Wh",
            )
    return combine(f"{device.name}/health", factors, weights)


async def device_health(conn: Conn, name: str) -> pb.Health:
    device = parse_device(_strip(name, "health"))
    return await _device_health(conn, await _device(conn, device), dt.datetime.now(dt.UTC))


def device_of(name: str, suffix: str) -> DeviceName:
    return parse_device(_strip(name, suffix))


def site_of(name: str) -> SiteName:
    return parse_site(_strip(name, "health"))


async def site_health(conn: Conn, site: SiteName) -> pb.Health:
    now = dt.datetime.now(dt.UTC)
    edges = await edges_of_site(conn, site)
    # A site without edges may still exist (it scores 0 for reporting); an unknown one is an error.
    if not edges and await site_profile(conn, site) is None:
        raise not_found(str(site))
    scores: list[tuple[str, float]] = []
    for pk, edge in edges.items():
        for item in await edge_inventory(conn, pk):
            device = _Device(DeviceName(edge, item.device_id), pk, item)
            scores.append((item.device_id, (await _device_health(conn, device, now)).score))
    factors: dict[str, tuple[float, str]] = {}
    if scores:
        mean = sum(s for _, s in scores) / len(scores)
        worst = min(scores, key=lambda x: x[1])
        factors["devices"] = (mean, f"mean of {len(scores)} devices")
        factors["worst_device"] = (worst[1], f"{worst[0]} scores {worst[1]:g}")
    last = await last_batch_times(conn, list(edges))
    reporting = sum(1 for pk in edges if pk in last and now - last[pk] <= EDGE_REPORTING)
    factors["edges_reporting"] = (
        100.0 * reporting / len(edges) if edges else 0.0,
        f"{reporting} of {len(edges)} edges sent telemetry in the last {EDGE_REPORTING.total_seconds() / 60:g} min",
    )
    return combine(f"{site}/health", factors, SITE_WEIGHTS)


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, R squared); R squared is 1 for a flat series."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    syy = sum((y - my) ** 2 for _, y in points)
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    r2 = 1.0 if syy == 0 else (sxy * sxy) / (sxx * syy) if sxx else 0.0
    return a, b, r2


async def _window_samples(
    conn: Conn, device: _Device, channel: str, window: dt.timedelta
) -> list[tuple[dt.datetime, float]]:
    """The channel's samples in the window that ends at its newest sample, oldest first."""
    address = f"{device.item.device_id}/{channel}"
    newest = await latest_value(conn, device.pk, address)
    if newest is None:
        return []
    cursor = ChannelCursor(device.pk, address, newest[0] - window - dt.timedelta(microseconds=1))
    return [(s.time, s.value) for s in await samples_after(conn, [cursor], 10_000)]


def _too_few(device: _Device, channel: str, count: int, window: dt.timedelta) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"{device.name}: {count} {channel} samples in the {window.total_seconds():g} s before the newest; "
        f"at least {MIN_FIT_SAMPLES} are needed",
        metadata={"resource": str(device.name)},
    )


async def projection(conn: Conn, name: str, window: dt.timedelta) -> pb.Projection:
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise invalid_field("window", "must be between 60s and 86400s")
    device = await _device(conn, device_of(name, "projection"))
    if device.item.kind == types_pb2.DEVICE_KIND_EV_CHARGER:
        return await _charger(conn, device, window)
    if not device.has("Soc"):
        raise invalid_field("name", f"{device.name} is neither a battery with a Soc channel nor an EV charger")
    samples = await _window_samples(conn, device, "Soc", window)
    if len(samples) < MIN_FIT_SAMPLES:
        raise _too_few(device, "Soc", len(samples), window)
    end = samples[-1][0]
    # Hours before the newest sample, so the intercept is the fitted state of charge at window_end_time.
    a, b, r2 = fit([((t - end).total_seconds() / 3600, v) for t, v in samples])
    out = pb.Projection(
        name=f"{device.name}/projection",
        window_start_time=timestamp(samples[0][0]),
        window_end_time=timestamp(end),
        sample_count=len(samples),
        soc_percent=a,
        soc_rate_percent_per_hour=b,
        r_squared=r2,
    )
    if b < -1e-9:
        out.time_to_empty.FromTimedelta(dt.timedelta(hours=max(0.0, a) / -b))
    elif b > 1e-9:
        out.time_to_full.FromTimedelta(dt.timedelta(hours=max(0.0, 100.0 - a) / b))
    return out


async def _charger(conn: Conn, device: _Device, window: dt.timedelta) -> pb.Projection:
    spec = next((c for c in device.item.channels if c.name == "ActivePower"), None)
    if spec is None or not spec.HasField("max_value") or spec.max_value <= 0:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_STATE_CONFLICT,
            f"{device.name} declares no rated power (the maximum of its ActivePower channel)",
            metadata={"resource": str(device.name)},
        )
    samples = await _window_samples(conn, device, "ActivePower", window)
    if len(samples) < MIN_FIT_SAMPLES:
        raise _too_few(device, "ActivePower", len(samples), window)
    out = pb.Projection(
        name=f"{device.name}/projection",
        window_start_time=timestamp(samples[0][0]),
        window_end_time=timestamp(samples[-1][0]),
        sample_count=len(samples),
        charger_utilisation=min(1.0, max(0.0, sum(v for _, v in samples) / len(samples) / spec.max_value)),
    )
    plugged = await _window_samples(conn, device, "Plugged", window)
    if plugged:
        out.plugged_share = sum(1 for _, v in plugged if v >= 0.5) / len(plugged)
    return out
