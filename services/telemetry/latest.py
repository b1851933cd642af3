"""Latest values: the newest sample of each series, kept by ingest (what command validation reads).

A site's latest values need the site's edges (the registry's) and then their series' newest samples.
`SiteLatest` remembers each site's edges, so the gateway's most frequent read is one query, not two;
the registry owns the edges table, so the two cannot be joined in one statement here. Why the remembered
edges stay right without any notification from the registry:

- An edge's values exist only through its series (telemetry.series), and series ids only grow
  (an identity column). A site's edges are remembered together with the largest series id at that
  moment, read before the edges. Every query of the remembered edges also reads the current largest
  id; when it grew, some series is new (perhaps of an edge created since), and the edges are read again.
  An edge created later can have values only through a series created later, whose id is larger
  (series are made by ingest for an edge that exists, never in the transaction that creates it).
- A deleted edge takes its series and latest values with it (ON DELETE CASCADE), so a remembered
  deleted edge adds nothing; an edge's pk is never reused and its name never changes.
- An answer without values reads the edges again (cheap, rare, and it settles an unknown site).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from services.names import EdgeName, SiteName
from services.platform.migrations import Conn
from services.registry import edges_of_site


async def latest_value(conn: Conn, edge_pk: int, channel: str) -> tuple[dt.datetime, float] | None:
    """(sample time, value) of the edge's `device/Channel`, or None when it never reported one."""
    row = await conn.fetchrow(
        """SELECT l.time, l.value FROM telemetry.series s JOIN telemetry.latest l ON l.series_id = s.id
           WHERE s.edge_pk = $1 AND s.channel = $2""",
        edge_pk,
        channel,
    )
    return None if row is None else (row["time"], row["value"])


# The latest values of one device's channels, as JSON [[channel, epoch seconds, value], ...]: an SQL
# expression for another domain's statement (registry.edge_with_device's `also`), `{edge_pk}` and
# `{device}` standing for its edge pk and device id, so CreateCommand reads a channel's dynamic limits
# in the round trip that finds the edge and the channel's declaration (which names the limit channel).
LATEST_OF_DEVICE = """(SELECT coalesce(json_agg(json_build_array(s.channel, extract(epoch FROM l.time), l.value)), '[]')
   FROM telemetry.series s JOIN telemetry.latest l ON l.series_id = s.id
   WHERE s.edge_pk = {edge_pk} AND starts_with(s.channel, {device} || '/'))"""


def latest_of_device(value: str | None) -> dict[str, tuple[dt.datetime, float]]:
    """LATEST_OF_DEVICE's value: `device/Channel` -> (sample time, value)."""
    return {
        channel: (dt.datetime.fromtimestamp(epoch, dt.UTC), float(v)) for channel, epoch, v in json.loads(value or "[]")
    }


_LATEST_OF_EDGES = """SELECT r.edge_pk, r.id AS series_id, r.channel, r.unit, l.time, l.value{extra}
   FROM telemetry.series r JOIN telemetry.latest l ON l.series_id = r.id
   WHERE r.edge_pk = ANY($1::bigint[]) AND ($2::text IS NULL OR r.channel LIKE $2 || '/%')
   ORDER BY array_position($1::bigint[], r.edge_pk), r.channel"""


async def latest_of_edges(conn: Conn, edge_pks: Sequence[int], device: str | None = None) -> list[Any]:
    """Latest values of the edges' series (edge_pk, series_id, channel, unit, time, value), in the order of
    `edge_pks`, then by channel; `device` narrows to that device's channels."""
    return list(await conn.fetch(_LATEST_OF_EDGES.format(extra=""), list(edge_pks), device))


# The same rows, each with the largest series id of the store (one InitPlan: read once per statement,
# in the statement's snapshot).
_LATEST_WITH_TOP = _LATEST_OF_EDGES.format(extra=", (SELECT max(id) FROM telemetry.series) AS top_series_id")
_TOP_SERIES = "SELECT coalesce(max(id), 0) FROM telemetry.series"

# Sites (with an edge filter) remembered per process: an entry is a few names, and a site read once a
# long time ago is simply read again.
MAX_REMEMBERED_SITES = 10_000


class SiteLatest:
    """Latest values of a site's edges, the edges remembered between calls (see the module's docstring)."""

    def __init__(self, max_sites: int = MAX_REMEMBERED_SITES) -> None:
        self._max_sites = max_sites
        self._sites: collections.OrderedDict[tuple[str, str, str | None], tuple[dict[int, EdgeName], int]] = (
            collections.OrderedDict()
        )

    async def read(
        self, conn: Conn, site: SiteName, edge_id: str | None = None, device: str | None = None
    ) -> tuple[dict[int, EdgeName], list[Any]]:
        """(pk -> name of the site's edges, or only `edge_id`; their latest-value rows as latest_of_edges)."""
        key = (site.org, site.site, edge_id)
        known = self._sites.get(key)
        if known is not None:
            edges, top = known
            rows = list(await conn.fetch(_LATEST_WITH_TOP, list(edges), device))
            if rows and rows[0]["top_series_id"] <= top:
                self._sites.move_to_end(key)
                return edges, rows
        # First read of the site, a series created since, or no values: the edges afresh. The largest
        # series id first: a series created after it was read has a larger id, whichever edge it is of.
        top = int(await conn.fetchval(_TOP_SERIES))
        edges = await edges_of_site(conn, site, edge_id)
        rows = await latest_of_edges(conn, list(edges), device)
        self._sites[key] = (edges, top)
        self._sites.move_to_end(key)
        while len(self._sites) > self._max_sites:
            self._sites.popitem(last=False)
        return edges, rows

    def __len__(self) -> int:
        return len(self._sites)
