"""The OpenAPI document: generated from the route table, equal to the committed snapshot, served."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.openapi import SNAPSHOT, build_openapi, render
from gateway.routes import build_route_table
from tests.support.gateway import Client


def test_snapshot_is_current() -> None:
    generated = render(build_openapi(build_route_table()))
    assert SNAPSHOT.read_text() == generated, (
        "the contracts changed the REST API: review the difference, then refresh the snapshot with "
        "`.venv/bin/python -m gateway.openapi --write` and commit it"
    )


def test_document_covers_every_route_once() -> None:
    table = build_route_table()
    document = build_openapi(table)
    assert document["openapi"] == "3.1.0"
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert sorted(op["operationId"] for op in operations) == sorted(r.operation_id for r in table.routes)
    # Resource names are spelled out with their ids as parameters, named after the resource patterns.
    item = document["paths"]["/v1/organizations/{organization}/fleetDispatches/{fleet_dispatch}"]
    assert [p["name"] for p in item["get"]["parameters"]] == ["organization", "fleet_dispatch"]
    history = document["paths"]["/v1/organizations/{organization}/sites/{site}:queryHistory"]["get"]
    query = {p["name"]: p for p in history["parameters"] if p["in"] == "query"}
    assert query["startTime"]["schema"] == {"type": "string", "format": "date-time"} and query["startTime"]["required"]
    assert query["channels"]["schema"]["type"] == "array" and query["channels"]["explode"] is True
    schemas = document["components"]["schemas"]
    point = schemas["emma.telemetry.v1.HistoryPoint"]["properties"]
    assert point["sampleCount"]["type"] == "string"  # int64 as a string
    assert schemas["emma.telemetry.v1.Aggregation"]["enum"][0] == "AGGREGATION_UNSPECIFIED"
    assert schemas["emma.telemetry.v1.QueryHistoryResponse"]["additionalProperties"] is False
    live = document["paths"]["/v1/organizations/{organization}/sites/{site}:streamLiveValues"]["get"]
    assert set(live["responses"]["200"]["content"]) == {"text/event-stream", "application/x-ndjson"}


def test_write_and_check_from_the_command_line(tmp_path: object) -> None:
    check = subprocess.run([sys.executable, "-m", "gateway.openapi", "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    printed = subprocess.run([sys.executable, "-m", "gateway.openapi"], capture_output=True, text=True, check=True)
    assert json.loads(printed.stdout)["info"]["title"] == "EMMA REST API"


async def test_served_document_is_the_generated_one(client: Client) -> None:
    async with client() as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == build_openapi(build_route_table())
