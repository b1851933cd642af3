"""Inputs from the platform, end to end on a real OptimizerService over real PostgreSQL: a real ENTSO-E
day-ahead document stored through the market domain's own store, forecasts stored through the
forecast domain's own store, an edge's inventory in the registry and its measured state stored
through the real ingest writer. A run that names only its site is assembled from them, solved and
stored as assembled; a site the platform knows too little about is refused with the list of what is
missing, and nothing is stored. The two readers the optimizer uses are checked on their own too."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import numpy as np
import pytest
from emma.common.v1 import types_pb2
from emma.edge.v1 import edge_link_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from services.edgelink.writer import IngestWriter, PendingBatch
from services.errors import error_info_of
from services.forecast import latest_forecast_values
from services.forecast.model import Forecast
from services.forecast.store import MadeForecast, save_run
from services.market import MarketDocument, PriceSeries, Slot, save_document, zone_prices
from services.market.documents import parse_document
from services.names import EdgeName, SiteName
from services.registry import ensure_edge, store_inventory
from services.telemetry import Columns
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant
from tests.support.telemetry_data import add_series

UTC = dt.UTC
SLOT = dt.timedelta(minutes=15)
DATA = Path(__file__).parents[1] / "market" / "data"
FIXTURE = "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"
DE_LU = "10Y1001A1001A82H"
ACME = "organizations/acme"
# The price parts the market does not publish, for Germany (EUR/MWh) and a fixed feed-in.
PRICE_ENV = {
    "EMMA_OPTIMIZER_NETWORK_TARIFFS": "DE=95.5",
    "EMMA_OPTIMIZER_TAXES": "DE=40",
    "EMMA_OPTIMIZER_FEED_IN": "DE=80",
}

_seq = iter(range(1, 1_000_000))


@pytest.fixture
def price_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test hosts hand the services the process environment as it is when they start.
    for k, v in PRICE_ENV.items():
        monkeypatch.setenv(k, v)


def _document() -> MarketDocument:
    return parse_document((DATA / FIXTURE).read_bytes(), FIXTURE)


def _shift(doc: MarketDocument, by: dt.timedelta) -> MarketDocument:
    """The real document's prices moved by whole days, so that they cover today: the values, series,
    resolutions and sequences stay as ENTSO-E published them."""
    prices = tuple(
        dataclasses.replace(s, slots=tuple(Slot(x.start + by, x.value) for x in s.slots)) for s in doc.prices
    )
    interval = None if doc.interval is None else (doc.interval[0] + by, doc.interval[1] + by)
    return dataclasses.replace(doc, prices=prices, interval=interval, document_id=f"{doc.document_id}-{by.days}")


def _days_to_today() -> dt.timedelta:
    # The fixture's second day (2024-10-06 22:00 UTC onwards) becomes today.
    today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return dt.timedelta(days=(today - dt.datetime(2024, 10, 6, tzinfo=UTC)).days)


def _hourly(doc: MarketDocument) -> dict[dt.datetime, float]:
    series = [s for s in doc.prices if s.sequence == 1]
    assert len(series) == 1 and series[0].resolution == dt.timedelta(hours=1)
    return {x.start: x.value for x in series[0].slots}


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata), caught.value.details() or ""


def _channel(name: str, unit: str, lo: float | None = None, hi: float | None = None) -> types_pb2.ChannelSpec:
    spec = types_pb2.ChannelSpec(name=name, unit=unit, access=types_pb2.CHANNEL_ACCESS_READ_ONLY)
    if lo is not None:
        spec.min_value = lo
    if hi is not None:
        spec.max_value = hi
    return spec


def _inventory() -> list[edge_link_pb2.DeviceInventoryItem]:
    """A battery, a PV inverter, a grid meter and an EV charger as the edge daemon's simulators declare them."""
    return [
        edge_link_pb2.DeviceInventoryItem(
            device_id="battery_1",
            kind=types_pb2.DEVICE_KIND_BATTERY,
            channels=[
                _channel("Soc", "%", 10, 95),  # the BMS's window, as the simulator declares it
                _channel("ActivePower", "W", -5000, 5000),
                _channel("StoredEnergy", "Wh", 0, 10_000),
                _channel("SetActivePower", "W", -5000, 5000),
            ],
        ),
        edge_link_pb2.DeviceInventoryItem(
            device_id="pv_1", kind=types_pb2.DEVICE_KIND_PV_INVERTER, channels=[_channel("ActivePower", "W", 0, 6000)]
        ),
        edge_link_pb2.DeviceInventoryItem(
            device_id="grid_1", kind=types_pb2.DEVICE_KIND_GRID_METER, channels=[_channel("ActivePower", "W")]
        ),
        edge_link_pb2.DeviceInventoryItem(
            device_id="ev_1",
            kind=types_pb2.DEVICE_KIND_EV_CHARGER,
            channels=[
                _channel("Plugged", ""),
                _channel("EnergyNeeded", "Wh", 0),
                _channel("SetActivePower", "W", 0, 11_000),
            ],
        ),
    ]


async def store_samples(migrated_url: str, pk: int, points: dict[int, list[tuple[dt.datetime, float]]]) -> None:
    """Samples through the real ingest writer (ledger, COPY, latest values, rollup dirt)."""
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    writer = IngestWriter(pool)
    await writer.start()
    try:
        futures = []
        for series_id, rows in points.items():
            cols = Columns(
                series_ids=np.full(len(rows), series_id, dtype=np.int64),
                times_unix_us=np.array([int(t.timestamp() * 1_000_000) for t, _ in rows], dtype=np.int64),
                values=np.array([v for _, v in rows], dtype=np.float64),
            )
            futures.append(await writer.submit(PendingBatch(pk, next(_seq), cols)))
        for f in futures:
            await f
    finally:
        await writer.stop()
        await pool.close()


def _forecast(start: dt.datetime, values: list[float]) -> Forecast:
    return Forecast(start, SLOT, tuple(values), tuple(values), tuple(values), (), "test-1")


async def _site(db: asyncpg.Connection, country: str = "DE", **registry: Any) -> tuple[EdgeName, int]:
    name = f"opt-{uuid.uuid4().hex[:8]}"
    edge = EdgeName("acme", name, "gw")
    pk = await ensure_edge(
        db, edge, time_zone="Europe/Berlin", latitude_deg=52.5, longitude_deg=13.4, country_code=country, **registry
    )
    return edge, pk


# A site as most are registered (country only: its zone and a grid bound follow from it), and one whose
# registry entry states its bidding zone and grid connection limits, which win over the configured zone
# (EMMA_OPTIMIZER_ZONES sends DE elsewhere in that case) and over the devices' own bound.
REGISTRY_CASES = {
    "country only": ({}, {}),
    "registry states zone and limits": (
        {"bidding_zone": "DE-LU", "grid_import_limit_w": 7000.0, "grid_export_limit_w": 3000.0},
        {"EMMA_OPTIMIZER_ZONES": "DE=FR"},
    ),
}


async def settled_now(margin_s: float = 20.0) -> dt.datetime:
    """Now, at least `margin_s` before the next quarter hour: a test comparing what the service
    assembles from its own clock with what it expects must not straddle a slot boundary."""
    now = dt.datetime.now(UTC)
    left = (_quarter(now) + SLOT - now).total_seconds()
    if left < margin_s:
        await asyncio.sleep(left + 0.1)
        now = dt.datetime.now(UTC)
    return now


def _quarter(now: dt.datetime) -> dt.datetime:
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


@pytest.mark.parametrize("case", list(REGISTRY_CASES))
async def test_a_run_naming_only_its_site_is_assembled_from_the_platform(
    host: Host, db: asyncpg.Connection, migrated_url: str, price_env: None, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    registry, env = REGISTRY_CASES[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    doc = _shift(_document(), _days_to_today())
    result = await save_document(db, doc, dt.datetime.now(UTC))
    assert result.outcome.name in ("STORED", "UNCHANGED")
    edge, pk = await _site(db, **registry)
    site = edge.site_name
    await store_inventory(db, pk, _inventory())
    now = await settled_now()
    await store_samples(
        migrated_url,
        pk,
        {
            await add_series(db, pk, "battery_1/StoredEnergy", "Wh"): [(now - dt.timedelta(seconds=30), 4200.0)],
            await add_series(db, pk, "ev_1/Plugged", ""): [(now - dt.timedelta(seconds=30), 1.0)],
            await add_series(db, pk, "ev_1/EnergyNeeded", "Wh"): [(now - dt.timedelta(seconds=30), 9000.0)],
        },
    )
    start = _quarter(now)
    slots = 48
    # An older, longer forecast and a newer one that starts later: each slot takes the newest covering it.
    old_load = [500.0 + i for i in range(slots + 8)]
    new_load = [900.0 + 2 * i for i in range(slots)]
    pv = [max(0.0, 3000.0 - 100.0 * abs(i - 24)) for i in range(slots + 8)]
    await save_run(
        db,
        site,
        now - dt.timedelta(hours=2),
        [
            MadeForecast("site_load", _forecast(start - SLOT * 8, old_load)),
            MadeForecast("pv_power", _forecast(start - SLOT * 8, pv)),
        ],
        trigger="scheduled",
        creator="test",
        request_id=None,
    )
    await save_run(
        db,
        site,
        now - dt.timedelta(minutes=5),
        [MadeForecast("site_load", _forecast(start + SLOT * 2, new_load[:-2]))],
        trigger="scheduled",
        creator="test",
        request_id=None,
    )
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "optimizer"]) as (server, _),
        authed_channel(server.port, operator.token) as ch,
        authed_channel(server.port, admin.token) as admin_ch,
    ):
        if registry:
            # The battery registered with a profile whose Soc channel states a narrower window than the
            # edge declares (20..90 % against 10..95 %): the narrower of both is planned with.
            reg = registry_pb2_grpc.RegistryServiceStub(admin_ch)
            profile_id = f"bat-{uuid.uuid4().hex[:6]}"
            await reg.CreateDeviceProfile(
                registry_pb2.CreateDeviceProfileRequest(
                    parent=ACME,
                    device_profile_id=profile_id,
                    device_profile=registry_pb2.DeviceProfile(
                        display_name="Battery",
                        kind=types_pb2.DEVICE_KIND_BATTERY,
                        channels=[
                            types_pb2.ChannelSpec(
                                name="Soc",
                                unit="%",
                                access=types_pb2.CHANNEL_ACCESS_READ_ONLY,
                                min_value=20,
                                max_value=90,
                            )
                        ],
                    ),
                )
            )
            await reg.CreateDevice(
                registry_pb2.CreateDeviceRequest(
                    parent=str(edge),
                    device_id="battery_1",
                    device=registry_pb2.Device(
                        display_name="Battery", device_profile=f"{ACME}/deviceProfiles/{profile_id}"
                    ),
                )
            )
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        run = await opt.RunOptimization(
            pb.RunOptimizationRequest(parent=ACME, sites=[str(site)], horizon=duration_pb2.Duration(seconds=12 * 3600))
        )
        assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED, run.failure_message
        assert run.inputs_assembled and run.trigger_reason == ""
        inputs = run.inputs
        assert inputs.start_time.ToDatetime(UTC) == start and inputs.slot_count == slots
        # Prices: the published hourly values (sequence 1) repeated into their quarter hours, exactly.
        hourly = _hourly(doc)
        expected = [hourly[(start + SLOT * i).replace(minute=0)] for i in range(slots)]
        assert list(inputs.prices.market_price_eur_per_mwh) == expected
        assert list(inputs.prices.feed_in_price_eur_per_mwh) == [80.0] * slots
        assert (inputs.prices.network_tariff_eur_per_mwh, inputs.prices.tax_eur_per_mwh) == (95.5, 40.0)
        assert inputs.prices.vat_rate == 0.19  # Germany's standard rate, from the built-in table
        # No carbon source on the platform: Germany's configured average on every slot, so the plan's
        # emissions are expected next to its cost; a COST run carries no carbon price.
        assert list(inputs.prices.carbon_intensity_g_per_kwh) == [381.0] * slots
        assert inputs.prices.carbon_cost_eur_per_tonne == 0.0
        assert run.expected.co2_kg == pytest.approx(run.expected.import_wh / 1000 * 0.381)
        assert run.baseline.co2_kg == pytest.approx(run.baseline.import_wh / 1000 * 0.381)
        # Load: the newer forecast where it reaches (from slot 2), the older one before.
        assert list(inputs.sites[0].load_w) == old_load[8:10] + new_load[:-2]
        assert [a.device for a in inputs.pv_arrays] == [f"{edge}/devices/pv_1"]
        assert list(inputs.pv_arrays[0].forecast_w) == pv[8:]
        assert inputs.pv_arrays[0].curtailable  # the edge follows a planned limit (dispatch.py)
        (battery,) = inputs.batteries
        assert (battery.device, battery.capacity_wh, battery.soc_wh) == (f"{edge}/devices/battery_1", 10_000, 4200)
        assert (battery.max_charge_w, battery.max_discharge_w) == (5000, 5000)
        # The usable window: the Soc channel's static limits (the edge's 10..95 %, or the registered
        # profile's narrower 20..90 %), so the plan never counts on energy the BMS will not give.
        window = (2000.0, 9000.0) if registry else (1000.0, 9500.0)
        assert (battery.min_soc_wh, battery.max_soc_wh) == window and battery.HasField("max_soc_wh")
        soc = next(s for s in run.schedules if s.kind == pb.ASSET_KIND_BATTERY)
        assert window[0] - 1e-6 <= min(soc.soc_wh) and max(soc.soc_wh) <= window[1] + 1e-6
        limits = (inputs.sites[0].import_limit_w, inputs.sites[0].export_limit_w)
        if registry:
            assert limits == (7000.0, 3000.0)
        else:  # what the battery, the car and the load can draw; the battery and the PV feed in
            assert limits == (
                math.ceil(5000 + 11_000 + max(inputs.sites[0].load_w)) + 1.0,
                math.ceil(5000 + max(pv[8:])) + 1.0,
            )
        (ev,) = inputs.ev_chargers
        local = now.astimezone(ZoneInfo("Europe/Berlin"))
        departure = dt.datetime.combine(local.date(), dt.time(7, 0), tzinfo=local.tzinfo)
        if departure <= local:
            departure += dt.timedelta(days=1)
        departure = min(departure.astimezone(UTC), start + SLOT * slots)
        assert ev.departure_time.ToDatetime(UTC) == departure
        hours = (departure - start) / dt.timedelta(hours=1)
        expected_wh = min(9000.0, 11_000 * hours)
        if registry:  # within the registry's 7 kW connection too, what the load leaves before departure
            slots_left = int((departure - start) // SLOT)
            room = sum(max(0.0, 7000.0 - w) for w in inputs.sites[0].load_w[:slots_left]) * 0.25
            expected_wh = min(expected_wh, room)
        assert ev.energy_wh == pytest.approx(expected_wh)
        # Stored as assembled; a replay of its stored inputs gives the same objective.
        got = await opt.GetOptimizationRun(pb.GetOptimizationRunRequest(name=run.name))
        assert got.inputs_assembled and got.inputs == inputs
        again = await opt.ReplayOptimizationRun(pb.ReplayOptimizationRunRequest(name=run.name))
        assert again.objective_value == run.objective_value and not again.inputs_assembled
        assert await db.fetchval("SELECT assembled FROM optimizer.runs WHERE site_names = $1", [str(site)]) is not None
        # Cost and carbon: the configured carbon price on the same configured intensity.
        both = await opt.RunOptimization(
            pb.RunOptimizationRequest(
                parent=ACME,
                sites=[str(site)],
                horizon=duration_pb2.Duration(seconds=12 * 3600),
                objective=pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON,
            )
        )
        assert both.inputs.prices.carbon_cost_eur_per_tonne == 67.0
        assert list(both.inputs.prices.carbon_intensity_g_per_kwh) == [381.0] * slots
        assert both.objective_value == pytest.approx(both.expected.cost_eur + 0.067 * both.expected.co2_kg, abs=1e-6)


async def test_a_site_whose_forecasts_start_at_the_next_quarter_hour_is_planned_from_them(
    host: Host, db: asyncpg.Connection, migrated_url: str, price_env: None
) -> None:
    # A new site's first forecasts, issued within the current quarter hour, start at the next one: the
    # slot in progress takes the next slot's values (assemble._slot_in_progress_filled) instead of
    # refusing every run until the next quarter hour.
    await save_document(db, _shift(_document(), _days_to_today()), dt.datetime.now(UTC))
    edge, pk = await _site(db)
    await store_inventory(db, pk, _inventory())
    now = await settled_now()
    await store_samples(
        migrated_url,
        pk,
        {
            await add_series(db, pk, "battery_1/StoredEnergy", "Wh"): [(now - dt.timedelta(seconds=30), 4200.0)],
            await add_series(db, pk, "ev_1/Plugged", ""): [(now - dt.timedelta(seconds=30), 0.0)],
        },
    )
    start = _quarter(now)
    load, pv = [700.0 + 10 * i for i in range(8)], [1000.0 + 100 * i for i in range(8)]
    made = [
        MadeForecast("site_load", _forecast(start + SLOT, load)),
        MadeForecast("pv_power", _forecast(start + SLOT, pv)),
    ]
    await save_run(db, edge.site_name, now, made, trigger="on_demand", creator="test", request_id=None)
    operator = await grant(db, "acme", "operator")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, operator.token) as ch:
        run = await optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(
            pb.RunOptimizationRequest(
                parent=ACME, sites=[str(edge.site_name)], horizon=duration_pb2.Duration(seconds=3600)
            )
        )
    assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED, run.failure_message
    assert run.inputs.start_time.ToDatetime(UTC) == start
    assert list(run.inputs.sites[0].load_w) == [load[0], *load[:3]]
    assert list(run.inputs.pv_arrays[0].forecast_w) == [pv[0], *pv[:3]]


async def test_what_the_platform_lacks_is_listed_and_nothing_is_stored(
    host: Host, db: asyncpg.Connection, migrated_url: str, price_env: None
) -> None:
    edge, pk = await _site(db, country="FR")  # no FR prices are stored; no FR tariffs configured
    site = edge.site_name
    inventory = _inventory()
    # The battery without StoredEnergy: no capacity.
    kept = [c for c in inventory[0].channels if c.name != "StoredEnergy"]
    del inventory[0].channels[:]
    inventory[0].channels.extend(kept)
    inventory.append(
        edge_link_pb2.DeviceInventoryItem(
            device_id="battery_2",
            kind=types_pb2.DEVICE_KIND_BATTERY,
            channels=[_channel("StoredEnergy", "Wh", 0, 5000), _channel("SetActivePower", "W", -3000, 3000)],
        )
    )
    await store_inventory(db, pk, inventory)
    old = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    await store_samples(
        migrated_url,
        pk,
        {
            await add_series(db, pk, "battery_2/StoredEnergy", "Wh"): [(old, 2500.0)],
            await add_series(db, pk, "ev_1/Plugged", ""): [(old, 0.0)],  # no car: nothing to plan
        },
    )
    operator = await grant(db, "acme", "operator")
    start = _quarter(await settled_now()).strftime("%Y-%m-%d %H:%M")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, operator.token) as ch:
        code, reason, metadata, message = await _error(
            optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(
                pb.RunOptimizationRequest(parent=ACME, sites=[str(site)], horizon=duration_pb2.Duration(seconds=3600))
            )
        )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
    missing = message.split("missing: ", 1)[1].split("; ")
    assert missing[:2] == [
        f"battery {edge}/devices/battery_1: no StoredEnergy channel with a maximum (its capacity)",
        f"battery {edge}/devices/battery_2: its state of charge was last measured {old.isoformat()}, "
        "more than 900 s ago",
    ]
    assert missing[2:] == [
        f"{site}: a load forecast (site_load) for 4 slots from {start} UTC",
        f"{site}: a PV forecast (pv_power) for 4 slots from {start} UTC",
        "the network tariff of country FR (set EMMA_OPTIMIZER_NETWORK_TARIFFS)",
        "the energy taxes of country FR (set EMMA_OPTIMIZER_TAXES)",
        "the feed-in price of country FR (set EMMA_OPTIMIZER_FEED_IN)",
        f"day-ahead prices of FR for 4 slots from {start} UTC (not published or not fetched yet)",
    ]
    assert metadata["missing"] == "; ".join(missing)
    assert await db.fetchval("SELECT count(*) FROM optimizer.runs WHERE $1 = ANY(site_names)", str(site)) == 0


async def test_zone_prices_repeat_the_hour_and_prefer_the_finest_resolution(db: asyncpg.Connection) -> None:
    doc = _document()
    await save_document(db, doc, dt.datetime(2024, 10, 7, 12, tzinfo=UTC))
    by_sequence = {s.sequence: s for s in doc.prices if s.zone == DE_LU}
    hourly = {x.start: x.value for x in by_sequence[1].slots}
    start = dt.datetime(2024, 10, 6, 10, tzinfo=UTC)
    got = await zone_prices(db, DE_LU, start + SLOT, start + dt.timedelta(hours=3))
    # Sequence 1 (hourly) only: each quarter hour is its hour's value, not sequence 2's quarter hours.
    assert got == [(start + SLOT * i, hourly[(start + SLOT * i).replace(minute=0)]) for i in range(1, 12)]
    assert any(v < 0 for _, v in await zone_prices(db, DE_LU, start, start + dt.timedelta(hours=6)))
    # Beyond what was published: nothing, never zeros.
    assert await zone_prices(db, DE_LU, dt.datetime(2030, 1, 1, tzinfo=UTC), dt.datetime(2030, 1, 2, tzinfo=UTC)) == []
    # A finer resolution of the same series wins over the hour it refines.
    quarter = PriceSeries(DE_LU, by_sequence[1].product, SLOT, (Slot(start + SLOT, -7.25),))
    finer = dataclasses.replace(
        doc, document_id="finer-1", prices=(quarter,), interval=(start + SLOT, start + 2 * SLOT)
    )
    await save_document(db, finer, dt.datetime(2024, 10, 7, 13, tzinfo=UTC))
    got = dict(await zone_prices(db, DE_LU, start, start + dt.timedelta(hours=1)))
    assert got[start + SLOT] == -7.25 and got[start] == hourly[start] and got[start + 2 * SLOT] == hourly[start]


async def test_latest_forecast_values_take_each_slot_from_the_newest_covering_forecast(db: asyncpg.Connection) -> None:
    site = SiteName("acme", f"fc-{uuid.uuid4().hex[:8]}")
    start = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    issue = dt.datetime(2026, 3, 1, 11, tzinfo=UTC)
    await save_run(
        db, site, issue, [MadeForecast("site_load", _forecast(start, [100.0] * 8))], trigger="scheduled",
        creator="t", request_id=None,
    )  # fmt: skip
    newer = [MadeForecast("site_load", _forecast(start + SLOT * 2, [200.0] * 3))]
    await save_run(db, site, issue + dt.timedelta(minutes=30), newer, trigger="scheduled", creator="t", request_id=None)
    got = await latest_forecast_values(db, site, {"site_load", "pv_power"}, start + SLOT, 10)
    assert got["site_load"] == [100.0, 200.0, 200.0, 200.0, 100.0, 100.0, 100.0, None, None, None]
    assert got["pv_power"] == [None] * 10
    # As of before the newer forecast was issued, only the older one is known.
    older = await latest_forecast_values(db, site, {"site_load"}, start, 8, as_of=issue + dt.timedelta(minutes=1))
    assert older["site_load"] == [100.0] * 8
    with pytest.raises(ValueError, match="unknown forecast kinds"):
        await latest_forecast_values(db, site, {"price"}, start, 4)
    with pytest.raises(ValueError, match="15-minute boundary"):
        await latest_forecast_values(db, site, {"site_load"}, start + dt.timedelta(minutes=5), 4)
