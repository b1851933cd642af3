"""Bulk provisioning of a site's edges and devices from CSV, all or nothing.

Header: kind,edge_id,device_id,display_name,device_profile. Every row is checked (against the
database and the rows above it) before anything is written; one bad row and nothing is created. The
caller runs this inside one transaction with the site row locked.
"""

from __future__ import annotations

import csv
import io

import grpc
from emma.common.v1 import errors_pb2
from emma.registry.v1 import registry_pb2

from services.errors import ApiError, invalid_field, not_found, reason_name
from services.names import DEVICE_ID_PATTERN, ID_PATTERN
from services.platform.migrations import Conn

HEADER = ["kind", "edge_id", "device_id", "display_name", "device_profile"]
MAX_ROWS = 10_000
MAX_BYTES = 5 * 1024 * 1024


def _fail(result: registry_pb2.BulkProvisionRowResult, reason: int, message: str) -> None:
    result.ok = False
    result.reason = reason_name(reason)
    result.message = message


async def provision(
    conn: Conn, org: str, site: str, content: str, validate_only: bool
) -> registry_pb2.BulkProvisionResponse:
    site_name = f"organizations/{org}/sites/{site}"
    if len(content.encode()) > MAX_BYTES:
        raise invalid_field("csv_content", f"at most {MAX_BYTES // 1024 // 1024} MiB")
    if (
        await conn.fetchval(
            "SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2" + ("" if validate_only else " FOR UPDATE"),
            org,
            site,
        )
        is None
    ):
        raise not_found(site_name)
    reader = csv.reader(io.StringIO(content.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise invalid_field("csv_content", "the file is empty; the first line is the header") from None
    except csv.Error as exc:
        raise invalid_field("csv_content", f"line 1: {exc}") from None
    if [h.strip() for h in header] != HEADER:
        raise invalid_field("csv_content", f"the header must be {','.join(HEADER)}")

    existing_edges = {
        r["edge_id"]: r["pk"]
        for r in await conn.fetch("SELECT edge_id, pk FROM app.edges WHERE org_id = $1 AND site_id = $2", org, site)
    }
    existing_devices = {
        (r["edge_id"], r["device_id"])
        for r in await conn.fetch(
            """SELECT e.edge_id, d.device_id FROM app.devices d JOIN app.edges e ON e.pk = d.edge_pk
               WHERE e.org_id = $1 AND e.site_id = $2""",
            org,
            site,
        )
    }
    profiles = {
        r["profile_id"] for r in await conn.fetch("SELECT profile_id FROM app.device_profiles WHERE org_id = $1", org)
    }

    rows: list[tuple[registry_pb2.BulkProvisionRowResult, list[str]]] = []
    new_edges: dict[str, str] = {}
    new_devices: set[tuple[str, str]] = set()
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(rows) >= MAX_ROWS:
                raise invalid_field("csv_content", f"at most {MAX_ROWS} rows per file")
            result = registry_pb2.BulkProvisionRowResult(line_number=line, ok=True)
            rows.append((result, fields))
            if len(fields) != len(HEADER):
                _fail(
                    result, errors_pb2.ERROR_REASON_FIELD_INVALID, f"expected {len(HEADER)} columns, got {len(fields)}"
                )
                continue
            kind, edge_id, device_id, display_name, profile = (f.strip() for f in fields)
            if not ID_PATTERN.match(edge_id):
                _fail(result, errors_pb2.ERROR_REASON_FIELD_INVALID, f"edge_id {edge_id!r} is not a valid id")
                continue
            edge_name = f"{site_name}/edges/{edge_id}"
            if len(display_name) > 200:
                _fail(result, errors_pb2.ERROR_REASON_FIELD_INVALID, "display_name: at most 200 characters")
                continue
            if kind == "edge":
                result.resource_name = edge_name
                if device_id or profile:
                    _fail(
                        result,
                        errors_pb2.ERROR_REASON_FIELD_INVALID,
                        "edge rows leave device_id and device_profile empty",
                    )
                elif edge_id in existing_edges or edge_id in new_edges:
                    _fail(result, errors_pb2.ERROR_REASON_RESOURCE_EXISTS, f"{edge_name} exists already")
                else:
                    new_edges[edge_id] = display_name
            elif kind == "device":
                if not DEVICE_ID_PATTERN.match(device_id):
                    _fail(result, errors_pb2.ERROR_REASON_FIELD_INVALID, f"device_id {device_id!r} is not a valid id")
                    continue
                result.resource_name = f"{edge_name}/devices/{device_id}"
                if edge_id not in existing_edges and edge_id not in new_edges:
                    _fail(
                        result,
                        errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
                        f"{edge_name} does not exist (add an edge row above this one)",
                    )
                elif profile not in profiles:
                    _fail(
                        result,
                        errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
                        f"device profile {profile!r} does not exist in organizations/{org}",
                    )
                elif (edge_id, device_id) in existing_devices or (edge_id, device_id) in new_devices:
                    _fail(result, errors_pb2.ERROR_REASON_RESOURCE_EXISTS, f"{result.resource_name} exists already")
                else:
                    new_devices.add((edge_id, device_id))
            else:
                _fail(result, errors_pb2.ERROR_REASON_FIELD_INVALID, f"kind must be edge or device, not {kind!r}")
    except csv.Error as exc:
        raise invalid_field("csv_content", f"line {reader.line_num}: {exc}") from None

    response = registry_pb2.BulkProvisionResponse(rows=[r for r, _ in rows])
    failed = [r for r, _ in rows if not r.ok]
    if validate_only:
        return response
    if failed:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_CSV_ROWS_INVALID,
            f"{len(failed)} of {len(rows)} rows fail; nothing was created (see field_violations, or send "
            "validate_only for the full report)",
            metadata={"failed_rows": str(len(failed)), "rows": str(len(rows))},
            field_violations=[(f"csv_content[line {r.line_number}]", f"{r.reason}: {r.message}") for r in failed[:100]],
        )
    created = 0
    for _, fields in rows:
        kind, edge_id, device_id, display_name, profile = (f.strip() for f in fields)
        if kind == "edge":
            existing_edges[edge_id] = await conn.fetchval(
                """INSERT INTO app.edges (org_id, site_id, edge_id, display_name) VALUES ($1, $2, $3, $4)
                   RETURNING pk""",
                org,
                site,
                edge_id,
                display_name,
            )
        else:
            await conn.execute(
                """INSERT INTO app.devices (edge_pk, device_id, org_id, profile_id, display_name)
                   VALUES ($1, $2, $3, $4, $5)""",
                existing_edges[edge_id],
                device_id,
                org,
                profile,
                display_name,
            )
        created += 1
    response.created_count = created
    return response
