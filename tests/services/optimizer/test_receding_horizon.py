"""The receding horizon on real PostgreSQL with real platform data (the setup of test_platform_inputs):
a plan in force assembled from the platform is left alone while nothing moved, re-optimised from the
measured state when the state of charge, a forecast or a price moved beyond its threshold and when the
interval ran out, each new run saying why; two replicas ticking at once make one run between them; a
plan of explicit inputs is never touched; the configuration refuses bad values naming the variable."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc
from google.protobuf import duration_pb2

from services.forecast.store import MadeForecast, save_run
from services.market import Slot, save_document
from services.optimizer import store
from services.optimizer.config import AssemblyConfig, HorizonConfig, OptimizerConfigError
from services.optimizer.horizon import CREATOR, RecedingHorizon
from tests.services.optimizer.test_platform_inputs import (
    ACME,
    PRICE_ENV,
    SLOT,
    UTC,
    _days_to_today,
    _document,
    _forecast,
    _inventory,
    _quarter,
    _shift,
    _site,
    add_series,
    settled_now,
    store_samples,
)
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

SLOTS = 16


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(migrated_url, min_size=1, max_size=6)
    assert p is not None
    yield p
    await p.close()


def _worker(pool: asyncpg.Pool, clock: list[dt.datetime], **config: float) -> RecedingHorizon:
    settings = dataclasses.replace(HorizonConfig(poll_s=1.0, horizon_slots=SLOTS), **config)  # type: ignore[arg-type]
    return RecedingHorizon(pool, settings, AssemblyConfig.from_env(PRICE_ENV), clock=lambda: clock[0])


async def _plan(host: Host, db: asyncpg.Connection, migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple:  # type: ignore[type-arg]
    """A site with prices, forecasts and a measured battery, and its first assembled plan."""
    for k, v in {**PRICE_ENV, "EMMA_OPTIMIZER_SCHEDULER": "off"}.items():
        monkeypatch.setenv(k, v)
    doc = _shift(_document(), _days_to_today())
    await save_document(db, doc, dt.datetime.now(UTC))
    edge, pk = await _site(db)
    await store_inventory_without_ev(db, pk)
    now = await settled_now(60.0)
    soc_series = await add_series(db, pk, "battery_1/StoredEnergy", "Wh")
    await store_samples(migrated_url, pk, {soc_series: [(now - dt.timedelta(seconds=10), 5000.0)]})
    start = _quarter(now)
    await save_run(
        db,
        edge.site_name,
        now - dt.timedelta(minutes=10),
        [
            MadeForecast("site_load", _forecast(start - SLOT, [700.0] * (SLOTS + 40))),
            MadeForecast("pv_power", _forecast(start - SLOT, [1000.0] * (SLOTS + 40))),
        ],
        trigger="scheduled",
        creator="test",
        request_id=None,
    )
    operator = await grant(db, "acme", "operator")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, operator.token) as ch:
        first = await optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(
            pb.RunOptimizationRequest(
                parent=ACME, sites=[str(edge.site_name)], horizon=duration_pb2.Duration(seconds=SLOTS * 900)
            )
        )
    assert first.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED and first.inputs_assembled
    return edge, pk, soc_series, first, doc, start


async def store_inventory_without_ev(db: asyncpg.Connection, pk: int) -> None:
    from services.registry import store_inventory

    await store_inventory(db, pk, [d for d in _inventory() if d.device_id != "ev_1"])


async def _runs(db: asyncpg.Connection, site: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM optimizer.runs WHERE $1 = ANY(site_names)", site))


async def test_a_plan_is_re_optimised_when_its_inputs_move_and_when_the_interval_ends(
    host: Host, db: asyncpg.Connection, migrated_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge, pk, soc_series, first, doc, start = await _plan(host, db, migrated_url, monkeypatch)
    site = str(edge.site_name)
    clock = [dt.datetime.now(UTC)]
    # The state of charge is only watched by `strict`: once a quarter hour passes, the plan expects
    # what it planned for the slot that ended, which a battery that stood still no longer matches.
    strict = _worker(pool, clock, soc_threshold=0.05)
    worker = _worker(pool, clock, price_threshold_eur_per_mwh=5.0, forecast_threshold_w=300.0, soc_threshold=1.0)

    # Nothing moved: the plan stays.
    assert await strict.tick() == []
    assert await _runs(db, site) == 1

    # The battery is 2 kWh off what the plan expects for now (20 % of its capacity, threshold 5 %).
    planned = first.inputs.batteries[0].soc_wh  # the first slot starts from the measured 5000 Wh
    assert planned == 5000.0
    await store_samples(migrated_url, pk, {soc_series: [(clock[0] - dt.timedelta(seconds=1), 3000.0)]})
    (run,) = await strict.tick()
    assert (
        run.trigger_reason == f"the state of charge of {edge}/devices/battery_1 is 3000 Wh, the plan expected 5000 Wh"
    )
    assert run.inputs_assembled and run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
    # The new plan starts at this quarter hour from the state measured now.
    assert run.inputs.start_time.ToDatetime(UTC) == _quarter(clock[0])
    assert run.inputs.batteries[0].soc_wh == 3000.0
    assert await worker.tick() == []  # the new plan is the reference now

    # A newer load forecast 800 W higher from the fourth slot on.
    now = dt.datetime.now(UTC)
    await save_run(
        db,
        edge.site_name,
        now,
        [MadeForecast("site_load", _forecast(start + SLOT * 3, [1500.0] * (SLOTS + 40)))],
        trigger="scheduled",
        creator="test",
        request_id=None,
    )
    clock[0] = now + dt.timedelta(seconds=1)
    (run,) = await worker.tick()
    assert run.trigger_reason == f"the load forecast of {site} moved 800 W at {(start + SLOT * 3).isoformat()}"

    # A new revision of the day-ahead document: one future hour 40 EUR/MWh dearer.
    hour = (_quarter(clock[0]) + dt.timedelta(hours=2)).replace(minute=0)
    seq1 = next(s for s in doc.prices if s.sequence == 1)
    changed = tuple(Slot(x.start, x.value + 40.0 if x.start == hour else x.value) for x in seq1.slots)
    revised = dataclasses.replace(
        doc,
        revision=doc.revision + 1,
        prices=tuple(dataclasses.replace(s, slots=changed) if s.sequence == 1 else s for s in doc.prices),
    )
    await save_document(db, revised, dt.datetime.now(UTC))
    (run,) = await worker.tick()
    assert run.trigger_reason == f"prices moved 40.00 EUR/MWh at {hour.isoformat()}"
    assert await worker.tick() == []

    # Nothing moved, but the interval is about to end (the next poll would come too late). The price
    # plan was made at the same clock reading as the forecast plan, so it is dated 1 µs later.
    clock[0] += dt.timedelta(seconds=900 - 1, milliseconds=1)
    await store_samples(migrated_url, pk, {soc_series: [(clock[0] - dt.timedelta(seconds=1), 3000.0)]})
    (run,) = await worker.tick()
    assert run.trigger_reason == "interval"
    assert await _runs(db, site) == 5
    creators = await db.fetch(
        "SELECT creator, count(*) AS n FROM optimizer.runs WHERE $1 = ANY(site_names) GROUP BY 1", site
    )
    assert {r["creator"]: r["n"] for r in creators}.get("optimizer:receding-horizon") == 4


async def test_replicas_take_turns_and_explicit_plans_are_left_alone(
    host: Host, db: asyncpg.Connection, migrated_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge, pk, soc_series, first, _, _ = await _plan(host, db, migrated_url, monkeypatch)
    site = str(edge.site_name)
    operator = await grant(db, "acme", "operator")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, operator.token) as ch:
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        # An operator's run of explicit inputs replaces the assembled plan: the worker leaves it alone.
        explicit = pb.OptimizationInputs()
        explicit.CopyFrom(first.inputs)
        run = await opt.RunOptimization(pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=explicit))
        assert not run.inputs_assembled
        clock = [dt.datetime.now(UTC) + dt.timedelta(seconds=899)]
        await store_samples(migrated_url, pk, {soc_series: [(clock[0] - dt.timedelta(seconds=1), 5000.0)]})
        assert await _worker(pool, clock).tick() == [] and await _runs(db, site) == 2
        # A new assembled plan, due for its interval: two replicas ticking at once make one run.
        again = await opt.RunOptimization(
            pb.RunOptimizationRequest(parent=ACME, sites=[site], horizon=duration_pb2.Duration(seconds=SLOTS * 900))
        )
        assert again.inputs_assembled
    clock[0] = dt.datetime.now(UTC) + dt.timedelta(seconds=899)
    await store_samples(migrated_url, pk, {soc_series: [(clock[0] - dt.timedelta(seconds=1), 5000.0)]})
    made = await asyncio.gather(_worker(pool, clock).tick(), _worker(pool, clock).tick())
    assert sorted(len(m) for m in made) == [0, 1]  # one replica re-optimised, the other found it done
    assert await _runs(db, site) == 4

    # Fresh inputs that admitted no schedule are tried again an interval later, not at every poll.
    (newest,) = [m for m in made if m]
    failed = pb.OptimizationRun(name=f"{ACME}/optimizationRuns/{uuid.uuid4()}", sites=[site])
    failed.state = pb.OPTIMIZATION_RUN_STATE_FAILED
    failed.create_time.FromDatetime(clock[0] + dt.timedelta(seconds=1))
    begin = newest[0].inputs.start_time.ToDatetime(UTC)
    await store.save_run(
        db, failed, newest[0].inputs, run_id=uuid.uuid4(), org="acme", start=begin, end=begin + SLOT,
        replay_of=None, creator=CREATOR, request_id=None, assembled=True,
    )  # fmt: skip
    clock[0] += dt.timedelta(seconds=900)
    await store_samples(migrated_url, pk, {soc_series: [(clock[0] - dt.timedelta(seconds=1), 5000.0)]})
    assert await _worker(pool, clock).tick() == []
    clock[0] += dt.timedelta(seconds=2)
    (run,) = await _worker(pool, clock).tick()
    assert run.trigger_reason == "interval" and await _runs(db, site) == 6


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"EMMA_OPTIMIZER_INTERVAL_S": "1800"}, "EMMA_OPTIMIZER_INTERVAL_S"),
        ({"EMMA_OPTIMIZER_SCHEDULER": "sometimes"}, "EMMA_OPTIMIZER_SCHEDULER"),
        ({"EMMA_OPTIMIZER_SOC_THRESHOLD": "2"}, "EMMA_OPTIMIZER_SOC_THRESHOLD"),
        ({"EMMA_OPTIMIZER_HORIZON_SLOTS": "4.5"}, "EMMA_OPTIMIZER_HORIZON_SLOTS"),
        ({"EMMA_OPTIMIZER_VAT": "DE=19"}, "EMMA_OPTIMIZER_VAT"),
        ({"EMMA_OPTIMIZER_NETWORK_TARIFFS": "Germany=90"}, "EMMA_OPTIMIZER_NETWORK_TARIFFS"),
        ({"EMMA_OPTIMIZER_FEED_IN": "DE=lots"}, "EMMA_OPTIMIZER_FEED_IN"),
        ({"EMMA_OPTIMIZER_ZONES": "IT=IT North"}, "EMMA_OPTIMIZER_ZONES"),
        ({"EMMA_OPTIMIZER_EV_DEPARTURE": "7:10"}, "EMMA_OPTIMIZER_EV_DEPARTURE"),
        ({"EMMA_OPTIMIZER_CARBON_INTENSITY": "DE=-5"}, "EMMA_OPTIMIZER_CARBON_INTENSITY"),
        ({"EMMA_OPTIMIZER_CARBON_INTENSITY": "DE LU=300"}, "EMMA_OPTIMIZER_CARBON_INTENSITY"),
        ({"EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE": "-1"}, "EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE"),
    ],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(OptimizerConfigError, match=variable):
        HorizonConfig.from_env(env)
        AssemblyConfig.from_env(env)


def test_configuration_reads_countries_and_market_feed_in() -> None:
    config = AssemblyConfig.from_env(
        {
            "EMMA_OPTIMIZER_FEED_IN": "ES=market,*=50",
            "EMMA_OPTIMIZER_VAT": "ES=0.1",
            "EMMA_OPTIMIZER_ZONES": "IT=IT-North",
        }
    )
    assert config.prices.feed_in == {"ES": "market", "*": 50.0}
    assert config.prices.vat["ES"] == 0.1 and config.prices.vat["DE"] == 0.19
    assert config.prices.zones["IT"] == "IT-North" and config.prices.zones["DE"] == "DE-LU"
    assert HorizonConfig.from_env({"EMMA_OPTIMIZER_SCHEDULER": "off"}).enabled is False


def test_carbon_intensity_by_zone_then_country_then_any() -> None:
    carbon = AssemblyConfig.from_env(
        {"EMMA_OPTIMIZER_CARBON_INTENSITY": "DE-LU=370,ES=120,*=250", "EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE": "80"}
    ).carbon
    assert carbon.intensity("DE-LU", "DE") == 370.0  # the zone's own wins over its country's built-in 381
    assert carbon.intensity("ES", "ES") == 120.0
    assert carbon.intensity("FR", "FR") == 56.0  # built in
    assert carbon.intensity("IT-North", "IT") == 250.0  # the * value
    assert carbon.price_eur_per_tonne == 80.0
    default = AssemblyConfig.from_env({}).carbon
    assert default.intensity("DE-LU", "DE") == 381.0 and default.intensity("ES", "ES") is None
    assert default.price_eur_per_tonne == 67.0
