"""`emma forecast run` as a real subprocess against real identity, registry and forecast services over
a real PostgreSQL, with the weather replay server in-process (the test's event loop keeps serving
both while the command runs): it logs in, runs, prints the stored run with energies that match the
stored slots, is idempotent by --request-id, and every refusal is one line with exit code 1."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from emma.common.v1 import types_pb2
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from launcher.weather_replay import running_weather_replay
from tests.support.cli_process import EMMA
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, Credentials, authed_channel, grant

PV = registry_pb2.PvSystem(
    arrays=[registry_pb2.PvArray(tilt_deg=35, azimuth_deg=180, peak_power_kw=6)], inverter_limit_w=5000, altitude_m=40
)


@pytest.fixture
async def weather(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with running_weather_replay() as server:
        monkeypatch.setenv("EMMA_WEATHER_URL", server.url)
        yield server.url


async def forecast(*args: str, password: str = PASSWORD) -> tuple[int, list[str], str]:
    env = {**os.environ, "EMMA_PASSWORD": password}
    proc = await asyncio.create_subprocess_exec(
        EMMA, "forecast", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def new_site(port: int, admin: Credentials, pv: bool) -> str:
    site = registry_pb2.Site(
        display_name="Roof",
        location=types_pb2.GeoLocation(latitude_deg=52.5, longitude_deg=13.4),
        time_zone="Europe/Berlin",
        country_code="DE",
    )
    if pv:
        site.pv_system.CopyFrom(PV)
    async with authed_channel(port, admin.token) as ch:
        created = await registry_pb2_grpc.RegistryServiceStub(ch).CreateSite(
            registry_pb2.CreateSiteRequest(parent="organizations/acme", site_id=f"s-{uuid.uuid4().hex[:8]}", site=site)
        )
    return created.name


async def test_run_prints_the_stored_run_and_a_repeat_returns_it(
    host: Host, db: asyncpg.Connection, weather: str
) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with host(["identity", "registry", "forecast"]) as (server, _):
        site = await new_site(server.port, admin, pv=True)
        cloud = f"127.0.0.1:{server.port}"
        args = ("run", "--site", site, "--cloud", cloud, "--email", operator.email, "--horizon-hours", "24")
        code, lines, err = await forecast(*args, "--request-id", "cli-1")
        assert code == 0, err
        header = re.fullmatch(rf"({site}/forecastRuns/\S+) succeeded issued \S+Z \(on_demand, by users/\S+\)", lines[0])
        assert header is not None, lines
        run_name = header.group(1)
        by_kind = {line.split()[0]: line for line in lines if line.startswith("  ") and "kWh" in line}
        assert sorted(by_kind) == ["net_load", "pv_power", "site_load"], lines
        assert all("24 h from" in line and "in 96 slots" in line for line in by_kind.values()), lines
        # The weather came from the replay: PV is not degraded and names its source.
        assert "weather open-meteo" in by_kind["pv_power"] and "; degraded" not in by_kind["pv_power"], lines
        async with authed_channel(server.port, operator.token) as ch:
            stub = forecast_pb2_grpc.ForecastServiceStub(ch)
            for kind, word in (
                (forecast_pb2.FORECAST_KIND_PV_POWER, "pv_power"),
                (forecast_pb2.FORECAST_KIND_SITE_LOAD, "site_load"),
            ):
                stored = await stub.GetLatestForecast(forecast_pb2.GetLatestForecastRequest(site=site, kind=kind))
                assert stored.run == run_name
                p50_kwh = sum(s.p50_w for s in stored.slots) * 0.25 / 1000
                printed = re.search(r": (\d+\.\d\d) kWh", by_kind[word])
                assert printed is not None and printed.group(1) == f"{p50_kwh:.2f}", by_kind[word]
        assert float(re.search(r": (\d+\.\d\d) kWh", by_kind["pv_power"]).group(1)) > 0  # type: ignore[union-attr]

        # The same request id: the stored run again, nothing new.
        code, again, err = await forecast(*args, "--request-id", "cli-1")
        assert code == 0, err
        assert again[0] == lines[0]
        assert await db.fetchval("SELECT count(*) FROM forecast.runs WHERE request_id = 'cli-1'") == 1

        # Only the load of a site without PV description.
        bare = await new_site(server.port, admin, pv=False)
        code, lines, err = await forecast(
            "run", "--site", bare, "--cloud", cloud, "--email", operator.email, "--kind", "load"
        )
        assert code == 0, err
        assert [line.split()[0] for line in lines[1:] if "kWh" in line] == ["site_load"], lines


async def test_refusals_are_one_line_and_exit_1(host: Host, db: asyncpg.Connection, weather: str) -> None:
    viewer = await grant(db, "acme", "viewer")
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with host(["identity", "registry", "forecast"]) as (server, _):
        cloud = f"127.0.0.1:{server.port}"
        bare = await new_site(server.port, admin, pv=False)
        cases = [
            # PV of a site without PV description: the cloud says what is missing.
            ((bare, operator.email, PASSWORD), "running a forecast of", "FAILED_PRECONDITION"),
            # A viewer may read forecasts but not run one.
            ((bare, viewer.email, PASSWORD), "running a forecast of", "PERMISSION_DENIED"),
            (("organizations/acme/sites/nowhere", operator.email, PASSWORD), "running a forecast", "NOT_FOUND"),
            ((bare, operator.email, "wrong password"), f"logging in as {operator.email}", "UNAUTHENTICATED"),
        ]
        for (site, email, password), step, code_name in cases:
            code, lines, err = await forecast(
                "run", "--site", site, "--cloud", cloud, "--email", email, password=password
            )
            assert code == 1 and lines == [], (lines, err)
            assert err.startswith(f"emma forecast run: error: {step}") and code_name in err, err
            assert len(err.strip().splitlines()) == 1, err
        # Caught before anything is sent.
        for flags, message in (
            (("--site", "acme/roof"), "--site 'acme/roof' is not organizations/{organization}/sites/{site}"),
            (("--site", bare, "--horizon-hours", "80"), "--horizon-hours 80 is not whole quarter hours"),
            (("--site", bare, "--horizon-hours", "1.1"), "--horizon-hours 1.1 is not whole quarter hours"),
        ):
            code, lines, err = await forecast("run", *flags, "--cloud", cloud, "--email", operator.email)
            assert code == 1 and message in err, err
    # Nothing listening any more.
    code, lines, err = await forecast("run", "--site", bare, "--cloud", cloud, "--email", operator.email)
    assert code == 1 and "cannot reach the cloud at" in err and "is it running?" in err, err
