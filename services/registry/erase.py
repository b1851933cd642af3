"""Deleting edges and sites with everything that hangs off them, and GDPR erasure of a site.

Tables that reference an edge by an `edge_pk` column are found in the catalog, so tables added by
later migrations (commands, inventories, ...) are erased too, whether or not their foreign key
cascades. What other domains keep of an edge beyond such rows (telemetry's samples and rollups
reference series, not edges) is deleted by the erasers the composition supplies (RegistryPorts).
"""

from __future__ import annotations

from emma.identity.v1 import identity_pb2
from emma.registry.v1 import registry_pb2

from services.errors import not_found
from services.identity import audit_row, call_state, erase_audit_requests, write_entries
from services.platform.idempotency import forget_responses_naming
from services.platform.interceptors import current_trace_id
from services.platform.migrations import Conn
from services.platform.redact import redacted_json
from services.registry.ports import RegistryPorts


def _count(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def delete_edges(conn: Conn, edge_pks: list[int], ports: RegistryPorts) -> dict[str, int]:
    """Delete the edges and everything of theirs; returns rows deleted per table ("telemetry.samples")."""
    counts: dict[str, int] = {}
    if not edge_pks:
        return counts
    for eraser in ports.edge_erasers:
        for table, n in (await eraser(conn, edge_pks)).items():
            counts[table] = counts.get(table, 0) + n
    tables = await conn.fetch(
        """SELECT c.table_schema, c.table_name FROM information_schema.columns c
           JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
           WHERE c.column_name = 'edge_pk' AND t.table_type = 'BASE TABLE'
             AND c.table_schema IN ('app', 'telemetry', 'identity')
           ORDER BY c.table_schema, c.table_name"""
    )
    # Children of children first where it matters: commands before their events cascade anyway.
    for t in tables:
        name = f"{t['table_schema']}.{t['table_name']}"
        status = await conn.execute(
            f'DELETE FROM "{t["table_schema"]}"."{t["table_name"]}" WHERE edge_pk = ANY($1)', edge_pks
        )
        counts[name] = counts.get(name, 0) + _count(status)
    counts["app.edges"] = _count(await conn.execute("DELETE FROM app.edges WHERE pk = ANY($1)", edge_pks))
    return counts


async def delete_site_data(conn: Conn, org: str, site: str, ports: RegistryPorts) -> dict[str, int]:
    pks = [r["pk"] for r in await conn.fetch("SELECT pk FROM app.edges WHERE org_id = $1 AND site_id = $2", org, site)]
    counts = await delete_edges(conn, pks, ports)
    await conn.execute("DELETE FROM app.sites WHERE org_id = $1 AND site_id = $2", org, site)
    return counts


async def erase_site(
    conn: Conn, org: str, site: str, request: registry_pb2.EraseSiteRequest, ports: RegistryPorts
) -> registry_pb2.EraseSiteResponse:
    """Erase the site in the caller's transaction and record the erasure in the audit log."""
    name = f"organizations/{org}/sites/{site}"
    if await conn.fetchval("SELECT 1 FROM app.sites WHERE org_id = $1 AND site_id = $2 FOR UPDATE", org, site) is None:
        raise not_found(name)
    counts = await delete_site_data(conn, org, site, ports)
    # Personal data the site left elsewhere: request payloads of its audit entries (names, addresses,
    # locations) are replaced (the trigger allows exactly this inside an erasure), and stored
    # idempotent responses that mention the site are dropped.
    await erase_audit_requests(conn, org, name)
    await forget_responses_naming(conn, name)
    state = call_state()
    actor = state.caller if state else None
    entries = await write_entries(
        conn,
        audit_row(
            [org],
            actor_kind=actor.actor_kind if actor else identity_pb2.ACTOR_KIND_SYSTEM,
            actor=actor.actor if actor else "system",
            method=state.method if state else "/emma.registry.v1.RegistryService/EraseSite",
            resource=name,
            request_json=redacted_json(request),
            result_code=0,
            result_message="",
            trace_id=current_trace_id(),
            client_address=state.client_address if state else "",
        ),
    )
    return registry_pb2.EraseSiteResponse(
        deleted_sample_count=counts.get("telemetry.samples", 0),
        deleted_command_count=counts.get("app.commands", 0),
        audit_entry=entries[0],
    )
