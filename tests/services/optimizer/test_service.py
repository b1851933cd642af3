"""OptimizerService on a real gRPC server over real PostgreSQL with the registry's real sites: a run
from explicit inputs is solved and stored with its inputs, read back, listed, replayed to exactly the
same objective, idempotent by request_id; an edge gets its part as the active schedule; infeasible
inputs are FAILED_PRECONDITION naming the conflict; bad input is INVALID_ARGUMENT naming the field;
viewers read but cannot run."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from grpc_status import rpc_status

from services.errors import error_info_of
from tests.support.cloud import Host
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    return caught.value.code(), info.reason, dict(info.metadata), caught.value.details() or ""


async def _site(reg: registry_pb2_grpc.RegistryServiceStub, country: str = "DE") -> str:
    created = await reg.CreateSite(
        registry_pb2.CreateSiteRequest(
            parent=ACME,
            site_id=f"s-{uuid.uuid4().hex[:8]}",
            site=registry_pb2.Site(display_name="Depot", time_zone="Europe/Berlin", country_code=country),
        )
    )
    return created.name


def _inputs(site: str, start: datetime, ev_kwh: float = 3.0) -> pb.OptimizationInputs:
    # Four slots: cheap, cheap, dear, dear; 4 kW of load in the dear ones; a 10 kWh battery that starts
    # empty (charges 4 kW at 90 %, gives back at 100 %) and an EV that must take ev_kwh by the end.
    inputs = pb.OptimizationInputs(
        slot_count=4,
        prices=pb.PriceInputs(market_price_eur_per_mwh=[100, 100, 300, 300], feed_in_price_eur_per_mwh=[0] * 4),
        sites=[pb.SiteInputs(site=site, load_w=[0, 0, 4000, 4000], import_limit_w=50_000, export_limit_w=50_000)],
        batteries=[
            pb.BatteryInputs(
                device=f"{site}/edges/gw/devices/bat",
                capacity_wh=10_000,
                soc_wh=0,
                max_charge_w=4000,
                max_discharge_w=4000,
                charge_efficiency=0.9,
                discharge_efficiency=1.0,
            )
        ],
        ev_chargers=[
            pb.EvChargerInputs(
                device=f"{site}/edges/gw/devices/ev",
                energy_wh=ev_kwh * 1000,
                arrival_time=start - timedelta(hours=1),
                departure_time=start + timedelta(hours=1),
                max_power_w=11_000,
            )
        ],
    )
    inputs.start_time.FromDatetime(start)
    return inputs


def _now_slot() -> datetime:
    now = datetime.now(UTC)
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


async def test_run_is_stored_replayed_exactly_and_scheduled(host: Host, db: asyncpg.Connection) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "optimizer"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        site = await _site(registry_pb2_grpc.RegistryServiceStub(admin_ch))
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        start = _now_slot()
        request = pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=_inputs(site, start), request_id="r-1")
        run = await opt.RunOptimization(request)
        assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED and run.optimal
        # Battery: 2 x 4 kW x 0.25 h = 2 kWh bought at 0.10, 1.8 kWh stored; 0.2 kWh of the dear load
        # bought at 0.30; the EV's 3 kWh in the cheap slots at 0.10.
        assert run.objective_value == pytest.approx(2 * 0.10 + 0.2 * 0.30 + 3 * 0.10, abs=1e-6)
        assert run.expected.import_wh == pytest.approx(2000 + 200 + 3000, abs=1e-3)
        assert run.baseline.cost_eur > run.expected.cost_eur
        assert run.solver == "HiGHS" and run.solver_version
        kinds = {s.asset: s.kind for s in run.schedules}
        assert kinds == {
            f"{site}/edges/gw/devices/bat": pb.ASSET_KIND_BATTERY,
            f"{site}/edges/gw/devices/ev": pb.ASSET_KIND_EV_CHARGER,
            site: pb.ASSET_KIND_GRID,
        }
        assert run.inputs.step.seconds == 900
        # Idempotent: the same request_id gives the same run; nothing new is stored.
        assert await opt.RunOptimization(request) == run
        assert await db.fetchval("SELECT count(*) FROM optimizer.runs WHERE org_id = 'acme'") == 1
        code, reason, _, _ = await _error(
            opt.RunOptimization(
                pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=_inputs(site, start, 2.0), request_id="r-1")
            )
        )
        assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

        assert await opt.GetOptimizationRun(pb.GetOptimizationRunRequest(name=run.name)) == run
        replay = await opt.ReplayOptimizationRun(pb.ReplayOptimizationRunRequest(name=run.name))
        assert replay.replay_of == run.name and replay.name != run.name
        assert replay.objective_value == run.objective_value  # exactly: same inputs, same solver
        assert replay.inputs == run.inputs

        listed = await opt.ListOptimizationRuns(pb.ListOptimizationRunsRequest(parent=ACME, page_size=1, site=site))
        assert [r.name for r in listed.optimization_runs] == [replay.name] and listed.next_page_token
        assert not listed.optimization_runs[0].schedules and not listed.optimization_runs[0].HasField("inputs")
        rest = await opt.ListOptimizationRuns(
            pb.ListOptimizationRunsRequest(parent=ACME, page_size=1, site=site, page_token=listed.next_page_token)
        )
        assert [r.name for r in rest.optimization_runs] == [run.name] and not rest.next_page_token

        active = await opt.GetActiveSchedule(pb.GetActiveScheduleRequest(edge=f"{site}/edges/gw"))
        assert active.run == replay.name
        assert active.valid_until_time.ToDatetime(UTC) == start + timedelta(hours=1)
        assert sorted(s.asset for s in active.schedules) == sorted(kinds)
        # Another edge of the site gets the site's grid plan only: none of its devices are planned.
        other = await opt.GetActiveSchedule(pb.GetActiveScheduleRequest(edge=f"{site}/edges/other"))
        assert [s.asset for s in other.schedules] == [site]


async def test_carbon_comes_from_the_inputs_else_from_the_configured_average(
    host: Host, db: asyncpg.Connection
) -> None:
    """Expected emissions next to cost: a run's own intensity per slot when it gives one, else the
    configured average of its sites' zone or country (Germany 381 g/kWh built in) on every slot, and the
    cost-and-carbon objective prices them (67 EUR/t built in, unless the inputs state a price)."""
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["registry", "optimizer"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        reg = registry_pb2_grpc.RegistryServiceStub(admin_ch)
        de, es = await _site(reg), await _site(reg, "ES")
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        start = _now_slot()

        cost = await opt.RunOptimization(pb.RunOptimizationRequest(parent=ACME, sites=[de], inputs=_inputs(de, start)))
        assert list(cost.inputs.prices.carbon_intensity_g_per_kwh) == [381.0] * 4
        assert cost.inputs.prices.carbon_cost_eur_per_tonne == 0.0  # a COST run keeps its (absent) price
        assert cost.expected.co2_kg == pytest.approx(cost.expected.import_wh / 1000 * 0.381)
        assert cost.baseline.co2_kg == pytest.approx(cost.baseline.import_wh / 1000 * 0.381)

        both = await opt.RunOptimization(
            pb.RunOptimizationRequest(
                parent=ACME,
                sites=[de],
                inputs=_inputs(de, start),
                objective=pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON,
            )
        )
        assert both.inputs.prices.carbon_cost_eur_per_tonne == 67.0
        assert both.objective_value == pytest.approx(both.expected.cost_eur + 0.067 * both.expected.co2_kg, abs=1e-6)
        replay = await opt.ReplayOptimizationRun(pb.ReplayOptimizationRunRequest(name=both.name))
        assert replay.objective_value == both.objective_value

        # The inputs' own intensity and price win: clean cheap slots, dirty dear ones, a dear tonne.
        own = _inputs(de, start)
        own.objective = pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON
        own.prices.carbon_intensity_g_per_kwh.extend([50, 50, 800, 800])
        own.prices.carbon_cost_eur_per_tonne = 500
        mine = await opt.RunOptimization(pb.RunOptimizationRequest(parent=ACME, sites=[de], inputs=own))
        assert list(mine.inputs.prices.carbon_intensity_g_per_kwh) == [50, 50, 800, 800]
        assert mine.inputs.prices.carbon_cost_eur_per_tonne == 500
        grid = next(s for s in mine.schedules if s.kind == pb.ASSET_KIND_GRID)
        kwh = [max(0.0, w) / 4000 for w in grid.power_w]
        assert mine.expected.co2_kg == pytest.approx(
            sum(k * g / 1000 for k, g in zip(kwh, [50, 50, 800, 800], strict=True)), abs=1e-6
        )

        # Spain has no built-in average: a COST run reports no emissions, COST_AND_CARBON is refused.
        es_cost = await opt.RunOptimization(
            pb.RunOptimizationRequest(parent=ACME, sites=[es], inputs=_inputs(es, start))
        )
        assert not es_cost.inputs.prices.carbon_intensity_g_per_kwh and es_cost.expected.co2_kg == 0.0
        code, reason, metadata, message = await _error(
            opt.RunOptimization(
                pb.RunOptimizationRequest(
                    parent=ACME,
                    sites=[es],
                    inputs=_inputs(es, start),
                    objective=pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON,
                )
            )
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
        assert metadata["field"] == "inputs.prices.carbon_intensity_g_per_kwh"
        assert "EMMA_OPTIMIZER_CARBON_INTENSITY" in message


async def test_infeasible_inputs_name_the_conflict_and_the_run_is_kept(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        site = await _site(registry_pb2_grpc.RegistryServiceStub(ch))
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        # 40 kWh in one hour at 11 kW cannot be.
        inputs = _inputs(site, _now_slot(), ev_kwh=40.0)
        code, reason, metadata, message = await _error(
            opt.RunOptimization(pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=inputs))
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATE_CONFLICT")
        assert f"EV {site}/edges/gw/devices/ev cannot reach 40 kWh by" in message
        failed = await opt.GetOptimizationRun(pb.GetOptimizationRunRequest(name=metadata["run"]))
        assert failed.state == pb.OPTIMIZATION_RUN_STATE_FAILED and len(failed.conflicts) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.sites.append("organizations/other/sites/x"), "sites[1]"),
        (lambda r: r.inputs.start_time.FromSeconds(r.inputs.start_time.seconds + 60), "inputs.start_time"),
        (
            lambda r: r.inputs.batteries[0].__setattr__(
                "device", "organizations/acme/sites/elsewhere/edges/e/devices/d"
            ),
            "inputs.batteries[0].device",
        ),
        (
            lambda r: r.inputs.ev_chargers[0].departure_time.FromSeconds(r.inputs.start_time.seconds + 86400),
            "inputs.ev_chargers[0].departure_time",
        ),
        (lambda r: setattr(r, "request_id", "x" * 201), "request_id"),
        (lambda r: r.inputs.time_limit.FromMilliseconds(500), "inputs.time_limit"),
        (lambda r: r.inputs.time_limit.FromSeconds(3601), "inputs.time_limit"),
    ],
)
async def test_bad_requests_name_their_field(host: Host, db: asyncpg.Connection, change: Any, field: str) -> None:
    admin = await grant(db, "acme", "admin")
    async with host(["registry", "optimizer"]) as (server, _), authed_channel(server.port, admin.token) as ch:
        site = await _site(registry_pb2_grpc.RegistryServiceStub(ch))
        request = pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=_inputs(site, _now_slot()))
        change(request)
        code, reason, metadata, _ = await _error(optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(request))
        assert (code, reason, metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID", field)


async def test_viewers_read_but_cannot_run(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    viewer = await grant(db, "acme", "viewer")
    async with (
        host(["registry", "optimizer"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, viewer.token) as ch,
    ):
        site = await _site(registry_pb2_grpc.RegistryServiceStub(admin_ch))
        opt = optimizer_pb2_grpc.OptimizerServiceStub(ch)
        request = pb.RunOptimizationRequest(parent=ACME, sites=[site], inputs=_inputs(site, _now_slot()))
        code, reason, _, _ = await _error(opt.RunOptimization(request))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT")
        listed = await opt.ListOptimizationRuns(pb.ListOptimizationRunsRequest(parent=ACME))
        assert all(r.name.startswith(ACME + "/optimizationRuns/") for r in listed.optimization_runs)
        code, reason, _, _ = await _error(
            opt.GetOptimizationRun(pb.GetOptimizationRunRequest(name=f"{ACME}/optimizationRuns/{uuid.uuid4()}"))
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
