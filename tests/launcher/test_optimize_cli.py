"""`emma optimize replay` as a real subprocess against real identity, registry and optimizer services
over a real PostgreSQL: it logs in, replays a stored run, prints both and exits 0 because the replay's
objective equals the stored one exactly; the replay is stored as a run of its own; every refusal is
one line with exit code 1."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from datetime import UTC, datetime

import asyncpg
from emma.optimizer.v1 import optimizer_pb2 as pb
from emma.optimizer.v1 import optimizer_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from tests.support.cli_process import EMMA
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, authed_channel, grant

ACME = "organizations/acme"


async def optimize(*args: str, password: str = PASSWORD) -> tuple[int, list[str], str]:
    env = {**os.environ, "EMMA_PASSWORD": password}
    proc = await asyncio.create_subprocess_exec(
        EMMA, "optimize", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def _inputs(site: str) -> pb.OptimizationInputs:
    # A day of 96 slots with a price valley at night and a peak in the evening, load all day and an
    # EV: enough for a plan with binaries whose objective has many significant digits.
    prices = [60 + 80 * ((t // 4) in (18, 19, 20)) - 40 * ((t // 4) < 6) for t in range(96)]
    inputs = pb.OptimizationInputs(
        slot_count=96,
        prices=pb.PriceInputs(
            market_price_eur_per_mwh=prices,
            feed_in_price_eur_per_mwh=[30] * 96,
            network_tariff_eur_per_mwh=45,
        ),
        sites=[
            pb.SiteInputs(
                site=site, load_w=[500 + 13 * t for t in range(96)], import_limit_w=17_000, export_limit_w=10_000
            )
        ],
        batteries=[
            pb.BatteryInputs(
                device=f"{site}/edges/gw/devices/bat",
                capacity_wh=13_500,
                soc_wh=4_000,
                max_charge_w=5_000,
                max_discharge_w=5_000,
                charge_efficiency=0.95,
                discharge_efficiency=0.95,
            )
        ],
    )
    inputs.start_time.FromDatetime(datetime(2026, 3, 2, tzinfo=UTC))
    return inputs


async def test_replay_reproduces_the_stored_objective_and_refusals_are_one_line(
    host: Host, db: asyncpg.Connection
) -> None:
    operator = await grant(db, "acme", "operator")
    viewer = await grant(db, "acme", "viewer")
    admin = await grant(db, "acme", "admin")
    async with (
        host(["identity", "registry", "optimizer"]) as (server, _),
        authed_channel(server.port, admin.token) as admin_ch,
        authed_channel(server.port, operator.token) as ch,
    ):
        created = await registry_pb2_grpc.RegistryServiceStub(admin_ch).CreateSite(
            registry_pb2.CreateSiteRequest(
                parent=ACME,
                site_id=f"s-{uuid.uuid4().hex[:8]}",
                site=registry_pb2.Site(display_name="Depot", time_zone="Europe/Berlin", country_code="DE"),
            )
        )
        run = await optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(
            pb.RunOptimizationRequest(parent=ACME, sites=[created.name], inputs=_inputs(created.name))
        )
        assert run.state == pb.OPTIMIZATION_RUN_STATE_SUCCEEDED
        cloud = f"127.0.0.1:{server.port}"

        code, lines, err = await optimize("replay", run.name, "--cloud", cloud, "--email", operator.email)
        assert code == 0, (lines, err)
        assert lines[0].startswith(f"original: {run.name} succeeded objective {run.objective_value!r} "), lines
        replay = re.match(r"replay: (\S+) succeeded objective (\S+) ", lines[1])
        assert replay is not None, lines
        assert float(replay.group(2)) == run.objective_value
        assert lines[2] == "reproduced: the objective is identical"
        # The replay is a stored run of its own that names the original.
        stored = await db.fetchrow(
            "SELECT objective, replay_of FROM optimizer.runs WHERE run_id = $1",
            uuid.UUID(replay.group(1).rsplit("/", 1)[1]),
        )
        assert stored is not None
        assert str(stored["replay_of"]) == run.name.rsplit("/", 1)[1]
        assert stored["objective"] == run.objective_value

        refusals = [
            (
                ("replay", "runs/1"),
                operator.email,
                PASSWORD,
                "is not organizations/{organization}/optimizationRuns/{uuid}",
            ),
            (("replay", f"{ACME}/optimizationRuns/{uuid.uuid4()}"), operator.email, PASSWORD, "NOT_FOUND"),
            (("replay", run.name), viewer.email, PASSWORD, "PERMISSION_DENIED"),
            (("replay", run.name), operator.email, "wrong password", "logging in as"),
        ]
        for args, email, password, message in refusals:
            code, lines, err = await optimize(*args, "--cloud", cloud, "--email", email, password=password)
            assert code == 1 and lines == [], (args, lines, err)
            assert err.startswith("emma optimize replay: error: ") and message in err, err
            assert len(err.strip().splitlines()) == 1, err


async def test_an_unreachable_cloud_is_said_as_such() -> None:
    code, lines, err = await optimize(
        "replay", f"{ACME}/optimizationRuns/{uuid.uuid4()}", "--cloud", "127.0.0.1:1", "--email", "x@acme.test"
    )
    assert code == 1 and lines == [], err
    assert "cannot reach the cloud at 127.0.0.1:1" in err, err
