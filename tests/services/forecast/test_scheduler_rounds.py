"""The forecast scheduler on real PostgreSQL with real registry sites and an injected clock: two
replicas racing over one round forecast each site exactly once; the next round comes 6 hours later,
not sooner; a site without PV gets its load forecast only."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from emma.common.v1 import types_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from services.forecast.config import SchedulerConfig
from services.forecast.scheduler import ForecastScheduler, round_start
from services.forecast.weather import WeatherConfig
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant


def _down_weather() -> WeatherConfig:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return WeatherConfig.from_env({"EMMA_WEATHER_URL": f"http://127.0.0.1:{port}", "EMMA_WEATHER_RETRIES": "0"})


async def test_two_replicas_run_each_site_once_per_six_hour_round(host: Host, db: asyncpg.Connection) -> None:
    org = f"o{uuid.uuid4().hex[:8]}"
    admin = await grant(db, org, "admin")
    async with host(["registry"]) as (server, runtime), authed_channel(server.port, admin.token) as ch:
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        names = []
        for i in range(4):
            site = registry_pb2.Site(
                display_name=f"S{i}",
                location=types_pb2.GeoLocation(latitude_deg=40.4, longitude_deg=-3.7),
                time_zone="Europe/Madrid",
                country_code="ES",
            )
            if i % 2 == 0:
                site.pv_system.CopyFrom(
                    registry_pb2.PvSystem(arrays=[registry_pb2.PvArray(tilt_deg=30, azimuth_deg=180, peak_power_kw=4)])
                )
            created = await reg.CreateSite(
                registry_pb2.CreateSiteRequest(parent=f"organizations/{org}", site_id=f"s{i}", site=site)
            )
            names.append(created.name)

        now = [datetime(2026, 6, 1, 6, 5, tzinfo=UTC)]
        config = SchedulerConfig(horizon_slots=8)
        weather = _down_weather()
        replicas = [
            ForecastScheduler(runtime.pool, f"replica-{r}", config, weather, clock=lambda: now[0]) for r in range(2)
        ]
        first = await asyncio.gather(*(r.run_due() for r in replicas))
        ours = sorted(str(s) for ran in first for s in ran if s.org == org)
        assert ours == sorted(names)  # every site once, by one replica or the other

        async def runs() -> dict[str, int]:
            rows = await db.fetch(
                "SELECT site_id, count(*) AS n FROM forecast.runs WHERE org_id = $1 GROUP BY site_id", org
            )
            return {r["site_id"]: r["n"] for r in rows}

        assert await runs() == {f"s{i}": 1 for i in range(4)}
        kinds = await db.fetch("SELECT site_id, kind FROM forecast.forecasts WHERE org_id = $1", org)
        assert {(r["site_id"], r["kind"]) for r in kinds} == {
            ("s0", "pv_power"), ("s0", "site_load"), ("s0", "net_load"), ("s1", "site_load"),
            ("s2", "pv_power"), ("s2", "site_load"), ("s2", "net_load"), ("s3", "site_load"),
        }  # fmt: skip

        # Later in the same round: nothing again. The next round, 6 hours on: every site once more.
        now[0] = datetime(2026, 6, 1, 11, 59, tzinfo=UTC)
        assert [s for r in replicas for s in await r.run_due() if s.org == org] == []
        now[0] = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        second = await asyncio.gather(*(r.run_due() for r in replicas))
        assert sorted(str(s) for ran in second for s in ran if s.org == org) == sorted(names)
        assert await runs() == {f"s{i}": 2 for i in range(4)}
        issued = await db.fetch(
            "SELECT DISTINCT issue_time FROM forecast.runs WHERE org_id = $1 ORDER BY issue_time", org
        )
        assert [r["issue_time"] for r in issued] == [
            datetime(2026, 6, 1, 6, 5, tzinfo=UTC),
            datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        ]


def test_rounds_start_every_interval_since_the_epoch() -> None:
    six = 6 * 3600.0
    assert round_start(datetime(2026, 6, 1, 17, 59, tzinfo=UTC), six) == datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert round_start(datetime(2026, 6, 1, 18, 0, tzinfo=UTC), six) == datetime(2026, 6, 1, 18, tzinfo=UTC)
    assert round_start(datetime(2026, 6, 1, 18, 0, tzinfo=UTC), 3600.0) + timedelta(hours=1) == datetime(
        2026, 6, 1, 19, tzinfo=UTC
    )
