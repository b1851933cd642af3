"""Recommendations: validation (every device named must be in the site's inventories), the per-site
rate limit, storage, and the operators' decisions."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import grpc
from emma.alarm.v1 import alarm_pb2 as pb
from emma.common.v1 import errors_pb2

from services.errors import ApiError, invalid_field, not_found
from services.names import SiteName, parse_device
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import edge_inventory, edge_pk, site_profile

MAX_TITLE, MAX_DETAIL, MAX_SOURCE, MAX_DEVICES, MAX_NOTE = 200, 2000, 100, 50, 500
RATE_WINDOW = dt.timedelta(hours=1)
_COLUMNS = """id, org_id, site_id, title, detail, source, confidence, devices, state, creator, create_time,
    decided_by, decide_time, decision_note"""


def name_of(org: str, site: str, rec_id: uuid.UUID) -> str:
    return f"organizations/{org}/sites/{site}/recommendations/{rec_id}"


def parse_name(name: str) -> tuple[SiteName, uuid.UUID]:
    parts = name.split("/")
    if len(parts) != 6 or parts[0] != "organizations" or parts[2] != "sites" or parts[4] != "recommendations":
        raise invalid_field(
            "name", f"{name!r} is not organizations/{{organization}}/sites/{{site}}/recommendations/{{recommendation}}"
        )
    try:
        return SiteName(parts[1], parts[3]), uuid.UUID(parts[5])
    except ValueError:
        raise invalid_field("name", f"{name!r} does not end in a recommendation id") from None


def check(rec: pb.Recommendation, site: SiteName) -> None:
    """Everything that needs no database; raises ApiError naming the field."""
    if not rec.title.strip() or len(rec.title) > MAX_TITLE:
        raise invalid_field("recommendation.title", f"1 to {MAX_TITLE} characters")
    if len(rec.detail) > MAX_DETAIL:
        raise invalid_field("recommendation.detail", f"at most {MAX_DETAIL} characters")
    if not rec.source.strip() or len(rec.source) > MAX_SOURCE:
        raise invalid_field("recommendation.source", f"required, 1 to {MAX_SOURCE} characters: the model or service")
    if not 0.0 <= rec.confidence <= 1.0:  # also refuses NaN
        raise invalid_field("recommendation.confidence", "between 0 and 1")
    if len(rec.devices) > MAX_DEVICES:
        raise invalid_field("recommendation.devices", f"at most {MAX_DEVICES} devices")
    for i, device in enumerate(rec.devices):
        d = parse_device(device, f"recommendation.devices[{i}]")
        if d.edge.site_name != site:
            raise invalid_field(f"recommendation.devices[{i}]", f"{device} is not a device of {site}")


async def check_assets(conn: Conn, site: SiteName, rec: pb.Recommendation) -> None:
    """The site exists and every device is in its edge's inventory (RESOURCE_NOT_FOUND otherwise)."""
    if await site_profile(conn, site) is None:
        raise not_found(str(site))
    inventories: dict[str, set[str]] = {}
    for device in rec.devices:
        d = parse_device(device)
        key = str(d.edge)
        if key not in inventories:
            pk = await edge_pk(conn, d.edge)
            inventories[key] = set() if pk is None else {i.device_id for i in await edge_inventory(conn, pk)}
        if d.device not in inventories[key]:
            raise not_found(device)


def _message(r: asyncpg.Record) -> pb.Recommendation:
    rec = pb.Recommendation(
        name=name_of(r["org_id"], r["site_id"], r["id"]),
        title=r["title"],
        detail=r["detail"],
        source=r["source"],
        confidence=r["confidence"],
        devices=list(r["devices"]),
        state=r["state"],
        creator=r["creator"],
        create_time=timestamp(r["create_time"]),
        decided_by=r["decided_by"],
        decision_note=r["decision_note"],
    )
    if r["decide_time"] is not None:
        rec.decide_time.CopyFrom(timestamp(r["decide_time"]))
    return rec


async def create(conn: Conn, site: SiteName, rec: pb.Recommendation, creator: str, per_hour: int) -> pb.Recommendation:
    # One poster at a time per site, so two concurrent posts cannot both pass the count.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('alarm.recommendations:' || $1))", str(site))
    recent = await conn.fetchval(
        """SELECT count(*) FROM alarm.recommendations
           WHERE org_id = $1 AND site_id = $2 AND create_time > now() - $3::interval""",
        site.org,
        site.site,
        RATE_WINDOW,
    )
    if recent >= per_hour:
        raise ApiError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors_pb2.ERROR_REASON_RATE_LIMITED,
            f"{site} received {recent} recommendations in the last hour (at most {per_hour}); try again later",
            metadata={"retry_after_ms": str(60_000), "resource": str(site)},
        )
    row = await conn.fetchrow(
        f"""INSERT INTO alarm.recommendations (id, org_id, site_id, title, detail, source, confidence, devices, creator)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
        uuid.uuid4(),
        site.org,
        site.site,
        rec.title,
        rec.detail,
        rec.source,
        rec.confidence,
        list(rec.devices),
        creator,
    )
    assert row is not None
    return _message(row)


async def list_site(conn: Conn, site: SiteName, state: int, offset: int, limit: int) -> list[pb.Recommendation]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM alarm.recommendations
           WHERE org_id = $1 AND site_id = $2 AND ($3 = 0 OR state = $3)
           ORDER BY create_time DESC, id OFFSET $4 LIMIT $5""",
        site.org,
        site.site,
        state,
        offset,
        limit,
    )
    return [_message(r) for r in rows]


async def decide(conn: Conn, name: str, state: int, actor: str, note: str) -> pb.Recommendation:
    if len(note) > MAX_NOTE:
        raise invalid_field("note", f"at most {MAX_NOTE} characters")
    site, rec_id = parse_name(name)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM alarm.recommendations WHERE org_id = $1 AND site_id = $2 AND id = $3 FOR UPDATE",
        site.org,
        site.site,
        rec_id,
    )
    if row is None:
        raise not_found(name)
    if row["state"] != pb.RECOMMENDATION_STATE_OPEN:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_STATE_CONFLICT,
            f"{name} was {pb.RecommendationState.Name(row['state']).removeprefix('RECOMMENDATION_STATE_').lower()} "
            f"by {row['decided_by']} already",
            metadata={"resource": name},
        )
    updated = await conn.fetchrow(
        f"""UPDATE alarm.recommendations SET state = $2, decided_by = $3, decide_time = now(), decision_note = $4
           WHERE id = $1 RETURNING {_COLUMNS}""",
        rec_id,
        state,
        actor,
        note,
    )
    assert updated is not None
    return _message(updated)
