"""GetRealisedSavings on a real OptimizerService over real PostgreSQL, with a hand-checkable day part:
a plan in force for four ended slots (cheap, cheap, dear, dear; 4 kW of load in the dear ones) and
the site's grid meter and battery measured through the real ingest writer as the battery followed the
plan (charged 4 kW in the cheap slots, gave 4 kW in the dear ones).

Realised: 2 kWh imported at 0.10 EUR/kWh = 0.20 EUR. Baseline: the self-consumption rule on the same
measured demand (grid + battery = 0, 0, 4, 4 kW) with the battery empty as the plan started it, so it
has nothing to give: 2 kWh at 0.30 EUR/kWh = 0.60 EUR. Savings 0.40 EUR over 4 slots, 9.60 EUR a
day. Emissions the same way at the plan's intensity (0.1 kg/kWh cheap, 0.5 dear): 0.2 kg realised,
1.0 kg baseline. Slots without a plan in force count as missing, not as zero."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import asyncpg
import grpc
import pytest
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc
from google.protobuf import timestamp_pb2

from services.names import EdgeName
from services.registry import ensure_edge, store_inventory
from tests.services.optimizer.test_platform_inputs import (
    ACME,
    SLOT,
    UTC,
    _error,
    _inventory,
    _quarter,
    add_series,
    store_samples,
)
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant
from tests.support.optimizer_plans import store_plan_made_before


def _ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


async def test_savings_compare_the_measured_grid_with_the_plan_and_the_baseline(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    name = f"rs-{uuid.uuid4().hex[:8]}"
    edge = EdgeName("acme", name, "gw")
    pk = await ensure_edge(db, edge, time_zone="Europe/Berlin", country_code="DE")
    await store_inventory(db, pk, [d for d in _inventory() if d.device_id in ("battery_1", "grid_1")])
    site = str(edge.site_name)
    start = _quarter(dt.datetime.now(UTC)) - dt.timedelta(hours=3)
    # The plan was made before its slots began (what the edge had followed).
    run = await store_plan_made_before(db, edge, start)
    grid = [4000.0, 4000.0, 0.0, 0.0, 500.0, 500.0]  # the last two slots: measured, but no plan in force
    battery = [-4000.0, -4000.0, 4000.0, 4000.0, 0.0, 0.0]  # discharging positive
    mid = [start + SLOT * i + SLOT / 2 for i in range(6)]
    await store_samples(
        migrated_url,
        pk,
        {
            await add_series(db, pk, "grid_1/ActivePower"): list(zip(mid, grid, strict=True)),
            await add_series(db, pk, "battery_1/ActivePower"): list(zip(mid, battery, strict=True)),
        },
    )
    viewer = await grant(db, "acme", "viewer")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, viewer.token) as ch:
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        got = await opt.GetRealisedSavings(
            pb.GetRealisedSavingsRequest(
                parent=ACME, sites=[site], start_time=_ts(start), end_time=_ts(start + SLOT * 6)
            )
        )
        (one,) = got.sites
        assert (one.site, one.slot_count, one.missing_slot_count) == (site, 4, 2)
        assert math.isclose(one.realised.grid_cost_eur, 0.20)
        assert (one.realised.import_wh, one.realised.export_wh) == (2000.0, 0.0)
        assert math.isclose(one.baseline.grid_cost_eur, 0.60) and one.baseline.import_wh == 2000.0
        # The plan expected what happened (its optimum: 2 kWh bought cheap, nothing dear).
        assert math.isclose(one.planned.grid_cost_eur, 0.20, abs_tol=1e-6)
        assert math.isclose(one.savings_eur, 0.40) and math.isclose(one.savings_eur_per_day, 9.60)
        # Emissions as the cost: the measured import at the plan's intensity of each slot. Realised 2 kWh
        # x 0.1 kg = 0.2 kg; baseline 2 kWh x 0.5 kg = 1.0 kg; 0.8 kg saved, 19.2 kg a day.
        assert math.isclose(one.realised.co2_kg, 0.2) and math.isclose(one.planned.co2_kg, 0.2, abs_tol=1e-6)
        assert math.isclose(one.baseline.co2_kg, 1.0)
        assert math.isclose(one.savings_co2_kg, 0.8) and math.isclose(one.savings_co2_kg_per_day, 19.2)
        assert math.isclose(got.total.savings_co2_kg, 0.8)
        assert got.total.site == "" and got.total.slot_count == 4 and math.isclose(got.total.savings_eur, 0.40)
        assert list(got.runs) == [run.name]

        # A period with nothing ended yet compares nothing, and says so.
        later = _quarter(dt.datetime.now(UTC)) + SLOT * 4
        empty = await opt.GetRealisedSavings(
            pb.GetRealisedSavingsRequest(parent=ACME, sites=[site], start_time=_ts(later), end_time=_ts(later + SLOT))
        )
        assert empty.sites[0].slot_count == 0 and empty.sites[0].savings_eur_per_day == 0.0

        for request, field in [
            (
                pb.GetRealisedSavingsRequest(
                    parent=ACME, sites=[site], start_time=_ts(start + dt.timedelta(minutes=5)), end_time=_ts(later)
                ),
                "start_time",
            ),
            (
                pb.GetRealisedSavingsRequest(parent=ACME, sites=[site], start_time=_ts(later), end_time=_ts(start)),
                "end_time",
            ),
            (
                pb.GetRealisedSavingsRequest(
                    parent=ACME, sites=[site, site], start_time=_ts(start), end_time=_ts(later)
                ),
                "sites",
            ),
            (
                pb.GetRealisedSavingsRequest(
                    parent=ACME, sites=["organizations/other/sites/x"], start_time=_ts(start), end_time=_ts(later)
                ),
                "sites[0]",
            ),
        ]:
            code, reason, metadata, _ = await _error(opt.GetRealisedSavings(request))
            assert (code, reason, metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)
        code, reason, _, _ = await _error(
            opt.GetRealisedSavings(
                pb.GetRealisedSavingsRequest(
                    parent=ACME, sites=[f"{ACME}/sites/nowhere"], start_time=_ts(start), end_time=_ts(later)
                )
            )
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize("days", [32])
async def test_a_period_longer_than_a_month_is_refused(host: Host, db: asyncpg.Connection, days: int) -> None:
    viewer = await grant(db, "acme", "viewer")
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, viewer.token) as ch:
        code, _, metadata, _ = await _error(
            optimizer_pb2_grpc.OptimizerServiceStub(ch).GetRealisedSavings(
                pb.GetRealisedSavingsRequest(
                    parent=ACME,
                    sites=[f"{ACME}/sites/x"],
                    start_time=_ts(start),
                    end_time=_ts(start + dt.timedelta(days=days)),
                )
            )
        )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and metadata["field"] == "end_time"
