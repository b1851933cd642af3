"""GDPR: a pseudonymised export of a site's consumption (no names, no exact location, stable ids) and
the erasure of a site (telemetry, commands, edges, keys, personal data gone; an audit record stays)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from tests.support.cloud import Host, new_edge
from tests.support.edge_client import EdgeStream, batch, hello
from tests.support.identity import authed_channel, grant

HOME = "Smith family home"


def _ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


async def _export(tel: telemetry_pb2_grpc.TelemetryServiceStub, site: str, start: dt.datetime, pseudo: bool) -> list:
    rows = tel.ExportSiteTelemetry(
        telemetry_pb2.ExportSiteTelemetryRequest(
            site=site,
            start_time=_ts(start),
            end_time=_ts(start + dt.timedelta(hours=2)),
            interval=duration_pb2.Duration(seconds=900),
            pseudonymize=pseudo,
        )
    )
    return [r async for r in rows]


async def test_pseudonymised_export_and_erasure(host: Host, db: asyncpg.Connection) -> None:
    edge, pk, key = await new_edge(db, "home")
    site = str(edge.site_name)
    admin = await grant(db, "acme", "admin")
    viewer = await grant(db, "acme", "viewer")
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    async with (
        host(["edge", "telemetry", "registry", "audit"]) as (server, _),
        authed_channel(server.port, admin.token) as ch,
        authed_channel(server.port, viewer.token) as ch_viewer,
    ):
        reg = registry_pb2_grpc.RegistryServiceStub(ch)
        tel = telemetry_pb2_grpc.TelemetryServiceStub(ch_viewer)
        # Personal data: the site's name and exact position (and they end up in an audit row).
        await reg.UpdateSite(
            registry_pb2.UpdateSiteRequest(
                site=registry_pb2.Site(
                    name=site, display_name=HOME, location={"latitude_deg": 40.41678, "longitude_deg": -3.70379}
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "location"]),
            )
        )
        stream = EdgeStream(server.port)
        await stream.send(hello(str(edge), key))
        await stream.recv()
        base = start.timestamp()
        # Two 15-minute intervals of three channels: Soc 50/60, ActivePower -1000/-2000, GridPower 300/500.
        points = [
            (0, 0, 50.0),
            (0, 600_000, 50.0),
            (1, 0, -1000.0),
            (2, 0, 300.0),
            (0, 900_000, 60.0),
            (1, 900_000, -2000.0),
            (2, 900_000, 500.0),
            (2, 1_200_000, 500.0),
        ]
        await stream.send(batch(1, base, points))
        await stream.recv_ack()

        exact = await _export(tel, site, start, pseudo=False)
        pseudo = await _export(tel, site, start, pseudo=True)
        assert {(r.channel, r.interval_start_time.seconds, r.average_value, r.unit) for r in exact} == {
            ("home/battery_1/Soc", int(base), 50.0, "%"),
            ("home/battery_1/Soc", int(base) + 900, 60.0, "%"),
            ("home/battery_1/ActivePower", int(base), -1000.0, "W"),
            ("home/battery_1/ActivePower", int(base) + 900, -2000.0, "W"),
            ("home/meter/GridPower", int(base), 300.0, "W"),
            ("home/meter/GridPower", int(base) + 900, 500.0, "W"),
        }
        assert {(r.site_id, r.latitude_deg, r.longitude_deg) for r in exact} == {("home", 40.41678, -3.70379)}
        # Pseudonymised: same numbers; no names or ids of the site, edge or devices; location to 0.1 degree.
        assert sorted((r.interval_start_time.seconds, r.average_value) for r in pseudo) == sorted(
            (r.interval_start_time.seconds, r.average_value) for r in exact
        )
        assert {(r.latitude_deg, r.longitude_deg) for r in pseudo} == {(40.4, -3.7)}
        for r in pseudo:
            text = f"{r.site_id} {r.channel}"
            assert "home" not in text and "battery_1" not in text and "meter" not in text and "acme" not in text
            assert r.site_id.startswith("site-") and r.channel.startswith("device-")
        assert len({r.site_id for r in pseudo}) == 1
        assert len({r.channel.split("/")[0] for r in pseudo}) == 2  # two devices, two pseudonyms
        assert {r.channel.split("/")[1] for r in pseudo} == {"Soc", "ActivePower", "GridPower"}
        # Stable: the next export gives the same ids.
        again = await _export(tel, site, start, pseudo=True)
        assert [(r.site_id, r.channel) for r in again] == [(r.site_id, r.channel) for r in pseudo]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            rows = tel.ExportSiteTelemetry(
                telemetry_pb2.ExportSiteTelemetryRequest(
                    site=site,
                    start_time=_ts(start),
                    end_time=_ts(start + dt.timedelta(hours=1)),
                    interval=duration_pb2.Duration(seconds=60),
                )
            )
            async for _ in rows:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A command of the edge (the command service's table), to see it erased too.
        await db.execute(
            """INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator,
                                         request_id, request_hash)
               VALUES ($1, $2, 'battery_1/SetActivePower', 100, 'QUEUED', now(), now() + interval '1 minute',
                       $3, 'r1', 'h')""",
            uuid.uuid4(),
            pk,
            admin.name,
        )
        samples = await db.fetchval(
            """SELECT count(*) FROM telemetry.samples s JOIN telemetry.series r ON r.id = s.series_id
               WHERE r.edge_pk = $1""",
            pk,
        )
        assert samples == len(points)
        series_ids = [r["id"] for r in await db.fetch("SELECT id FROM telemetry.series WHERE edge_pk = $1", pk)]

        # A viewer cannot erase; an admin can.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await registry_pb2_grpc.RegistryServiceStub(ch_viewer).EraseSite(registry_pb2.EraseSiteRequest(name=site))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        t0 = time.monotonic()
        erased = await reg.EraseSite(registry_pb2.EraseSiteRequest(name=site))
        assert (erased.deleted_sample_count, erased.deleted_command_count) == (len(points), 1)
        # The edge's open stream is closed (its key is gone).
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            while True:
                await stream.recv(timeout=5)
        assert closed.value.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() - t0 < 2
        await stream.close()

        # Nothing of the site is left.
        for sql in (
            "SELECT count(*) FROM telemetry.samples WHERE series_id = ANY($1)",
            "SELECT count(*) FROM telemetry.rollup_15m WHERE series_id = ANY($1)",
            "SELECT count(*) FROM telemetry.rollup_1h WHERE series_id = ANY($1)",
            "SELECT count(*) FROM telemetry.series WHERE id = ANY($1)",
        ):
            assert await db.fetchval(sql, series_ids) == 0, sql
        for sql in (
            "SELECT count(*) FROM app.edges WHERE pk = $1",
            "SELECT count(*) FROM app.commands WHERE edge_pk = $1",
            "SELECT count(*) FROM identity.edge_api_keys WHERE edge_pk = $1",
            "SELECT count(*) FROM app.edge_events WHERE edge_pk = $1",
            "SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1",
        ):
            assert await db.fetchval(sql, pk) == 0, sql
        assert await db.fetchval("SELECT count(*) FROM app.sites WHERE org_id = 'acme' AND site_id = 'home'") == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reg.GetSite(registry_pb2.GetSiteRequest(name=site))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # ... not even in the audit log, whose entries remain, with their payloads erased.
        dump = await db.fetchval("SELECT string_agg(request_json, ' ') FROM identity.audit_entries")
        assert HOME not in dump and "40.41678" not in dump
        updates = await db.fetch(
            "SELECT request_json, actor FROM identity.audit_entries WHERE resource = $1 AND method LIKE '%UpdateSite'",
            site,
        )
        assert [(r["request_json"], r["actor"]) for r in updates] == [('{"erased":true}', admin.name)]

        # The erasure itself is on record.
        entry = await identity_pb2_grpc.AuditServiceStub(ch).GetAuditEntry(
            identity_pb2.GetAuditEntryRequest(name=erased.audit_entry)
        )
        assert entry.method == "/emma.registry.v1.RegistryService/EraseSite"
        assert entry.actor == admin.name and entry.resource == site and entry.result_code == 0
        assert json.loads(entry.request_json) == {"name": site}
        assert (
            await db.fetchval(
                "SELECT count(*) FROM identity.audit_entries WHERE method LIKE '%EraseSite' AND resource = $1", site
            )
            == 1
        )
