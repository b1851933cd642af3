"""OptimizerService over REST: the generated gateway (in-process over ASGI) in front of the real identity,
registry and optimizer services. Every RPC's http rule answers as JSON: a run from explicit inputs, the
run read back, listed, replayed to the same objective, an edge's active schedule, the realised savings;
bad input is a 400 with the AIP-193 body naming the field, and an infeasible run a 400
FAILED_PRECONDITION naming the conflict."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from google.protobuf import json_format

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.services.optimizer.test_service import ACME, _inputs, _now_slot
from tests.support.cloud import Host
from tests.support.gateway import error_of, reason_of
from tests.support.identity import grant


async def test_every_optimizer_rpc_over_rest(host: Host, db: asyncpg.Connection) -> None:
    operator = await grant(db, "acme", "operator")
    admin = await grant(db, "acme", "admin")
    async with host(["identity", "registry", "optimizer"]) as (server, _):
        app = create_app(GatewayConfig(target=f"127.0.0.1:{server.port}", port=0, write_rate_per_s=0))
        transport = httpx.ASGITransport(app=app)
        try:
            async with (
                httpx.AsyncClient(
                    transport=transport,
                    base_url="http://gateway.test",
                    headers={"authorization": f"Bearer {admin.token}"},
                ) as as_admin,
                httpx.AsyncClient(
                    transport=transport,
                    base_url="http://gateway.test",
                    headers={"authorization": f"Bearer {operator.token}"},
                ) as c,
            ):
                created = await as_admin.post(
                    f"/v1/{ACME}/sites",
                    params={"siteId": f"r-{uuid.uuid4().hex[:8]}"},
                    json={"displayName": "Depot", "timeZone": "Europe/Berlin", "countryCode": "DE"},
                )
                assert created.status_code == 200, created.text
                site = created.json()["name"]
                start = _now_slot()
                inputs = json_format.MessageToDict(_inputs(site, start))

                run = await c.post(
                    f"/v1/{ACME}/optimizationRuns:run", json={"sites": [site], "inputs": inputs, "requestId": "rest-1"}
                )
                assert run.status_code == 200, run.text
                body = run.json()
                assert body["state"] == "OPTIMIZATION_RUN_STATE_SUCCEEDED" and body["solver"] == "HiGHS"
                # The hand-checked objective of test_service, and the carbon filled in from configuration.
                assert abs(body["objectiveValue"] - (2 * 0.10 + 0.2 * 0.30 + 3 * 0.10)) < 1e-6
                assert body["inputs"]["prices"]["carbonIntensityGPerKwh"] == [381.0] * 4
                assert body["expected"]["co2Kg"] > 0 and body["baseline"]["costEur"] > body["expected"]["costEur"]
                name = body["name"]

                got = await c.get(f"/v1/{name}")
                assert got.status_code == 200 and got.json()["objectiveValue"] == body["objectiveValue"]
                listed = await c.get(f"/v1/{ACME}/optimizationRuns", params={"site": site})
                assert [r["name"] for r in listed.json()["optimizationRuns"]] == [name]
                replay = await c.post(f"/v1/{name}:replay", json={})
                assert replay.status_code == 200, replay.text
                assert replay.json()["replayOf"] == name
                assert replay.json()["objectiveValue"] == body["objectiveValue"]

                active = await c.get(f"/v1/{site}/edges/gw:activeSchedule")
                assert active.status_code == 200, active.text
                assert active.json()["run"] == replay.json()["name"]

                end = start + timedelta(minutes=15)
                savings = await c.get(
                    f"/v1/{ACME}/optimizationRuns:realisedSavings",
                    params={"sites": site, "startTime": _iso(start - timedelta(hours=1)), "endTime": _iso(end)},
                )
                assert savings.status_code == 200, savings.text
                # Nothing was measured: every ended slot is missing, none is counted as zero.
                assert savings.json()["sites"][0]["site"] == site
                assert savings.json()["sites"][0].get("slotCount", 0) == 0

                bad = await c.post(
                    f"/v1/{ACME}/optimizationRuns:run",
                    json={"sites": [site], "inputs": {**inputs, "slotCount": 5}},
                )
                assert bad.status_code == 400, bad.text
                error = error_of(bad)
                assert error["status"] == "INVALID_ARGUMENT" and reason_of(error) == "FIELD_INVALID"

                infeasible = json_format.MessageToDict(_inputs(site, start, ev_kwh=40.0))
                refused = await c.post(f"/v1/{ACME}/optimizationRuns:run", json={"sites": [site], "inputs": infeasible})
                assert refused.status_code == 400, refused.text
                error = error_of(refused)
                assert error["status"] == "FAILED_PRECONDITION" and reason_of(error) == "STATE_CONFLICT"
                assert f"EV {site}/edges/gw/devices/ev cannot reach 40 kWh by" in error["message"]
        finally:
            await app.state.gateway.close()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
