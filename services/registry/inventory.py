"""What each edge says it runs (its Hello's device inventory): stored by EdgeLink, read by commands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from emma.edge.v1 import edge_link_pb2

from services.names import EdgeName
from services.platform.migrations import Conn


async def store_inventory(conn: Conn, edge_pk: int, devices: Iterable[edge_link_pb2.DeviceInventoryItem]) -> None:
    """Insert or replace the edge's entries for these devices (devices it no longer reports stay)."""
    await store_inventories(conn, [(edge_pk, devices)])


async def store_inventories(
    conn: Conn, declared: Iterable[tuple[int, Iterable[edge_link_pb2.DeviceInventoryItem]]]
) -> None:
    """`store_inventory` of several edges (edge_pk, its devices) in one call (the Hellos EdgeLink takes
    together)."""
    rows = [
        (edge_pk, d.device_id, d.kind, d.driver, d.model, d.SerializeToString())
        for edge_pk, devices in declared
        for d in devices
    ]
    if not rows:
        return
    await conn.executemany(
        """INSERT INTO app.edge_inventory (edge_pk, device_id, kind, driver, model, channels)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (edge_pk, device_id) DO UPDATE SET kind = EXCLUDED.kind, driver = EXCLUDED.driver,
               model = EXCLUDED.model, channels = EXCLUDED.channels, update_time = now()""",
        rows,
    )


async def edge_with_device(
    conn: Conn, name: EdgeName, device_id: str, also: str = ""
) -> tuple[int, bytes | None, Any] | None:
    """(the edge's pk, its device's stored declaration or None, `also`'s value) in one round trip; None
    for no such edge.

    CreateCommand's path: an operator feels every round trip, so the lookups are one statement. `also`
    is an SQL expression of another domain (its own tables, from its package face) read in the same
    statement, `{edge_pk}` and `{device}` in it standing for the edge's pk and the device id; its value
    is the third item (None when `also` is empty).
    """
    extra = also.format(edge_pk="e.pk", device="$4") if also else "NULL"
    row = await conn.fetchrow(
        f"""SELECT e.pk, i.channels, {extra} AS also FROM app.edges e
           LEFT JOIN app.edge_inventory i ON i.edge_pk = e.pk AND i.device_id = $4
           WHERE e.org_id = $1 AND e.site_id = $2 AND e.edge_id = $3""",
        name.org,
        name.site,
        name.edge,
        device_id,
    )
    if row is None:
        return None
    return int(row["pk"]), None if row["channels"] is None else bytes(row["channels"]), row["also"]


async def edge_inventory(conn: Conn, edge_pk: int) -> list[edge_link_pb2.DeviceInventoryItem]:
    """Every device the edge reported, by device id (`kind` and `channels` as the edge declared them)."""
    rows = await conn.fetch("SELECT channels FROM app.edge_inventory WHERE edge_pk = $1 ORDER BY device_id", edge_pk)
    return [edge_link_pb2.DeviceInventoryItem.FromString(bytes(r["channels"])) for r in rows]
