"""What each edge says it runs (its Hello's device inventory): stored by EdgeLink, read by commands."""

from __future__ import annotations

from collections.abc import Iterable

from emma.edge.v1 import edge_link_pb2

from services.platform.migrations import Conn


async def store_inventory(conn: Conn, edge_pk: int, devices: Iterable[edge_link_pb2.DeviceInventoryItem]) -> None:
    """Insert or replace the edge's entries for these devices (devices it no longer reports stay)."""
    devices = list(devices)
    if not devices:
        return
    await conn.executemany(
        """INSERT INTO app.edge_inventory (edge_pk, device_id, kind, driver, model, channels)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (edge_pk, device_id) DO UPDATE SET kind = EXCLUDED.kind, driver = EXCLUDED.driver,
               model = EXCLUDED.model, channels = EXCLUDED.channels, update_time = now()""",
        [(edge_pk, d.device_id, d.kind, d.driver, d.model, d.SerializeToString()) for d in devices],
    )


async def device_inventory(conn: Conn, edge_pk: int, device_id: str) -> bytes | None:
    """The device's stored DeviceInventoryItem (serialized), or None when the edge never reported it."""
    blob = await conn.fetchval(
        "SELECT channels FROM app.edge_inventory WHERE edge_pk = $1 AND device_id = $2", edge_pk, device_id
    )
    return None if blob is None else bytes(blob)


async def edge_inventory(conn: Conn, edge_pk: int) -> list[edge_link_pb2.DeviceInventoryItem]:
    """Every device the edge reported, by device id (`kind` and `channels` as the edge declared them)."""
    rows = await conn.fetch("SELECT channels FROM app.edge_inventory WHERE edge_pk = $1 ORDER BY device_id", edge_pk)
    return [edge_link_pb2.DeviceInventoryItem.FromString(bytes(r["channels"])) for r in rows]
