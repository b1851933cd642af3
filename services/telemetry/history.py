"""History queries: which store answers (raw, 15-minute or hourly rollups) and how buckets align.

Buckets are whole: a query returns every bucket that overlaps [start, end), each aggregated over its
full width. Rollups answer every bucket that is complete and clean; the still-open or dirty tail
(from the edge's earliest dirty 15-minute bucket on) is read from raw rows and merged, so an answer
is always current. All reads run in one REPEATABLE READ snapshot, so the rollup worker cannot move
data between the two sources mid-query.

Alignment: in UTC, buckets are fixed widths from the Unix epoch. In the site's time zone, a bucket
of a day or more is a calendar day (23 or 25 hours on DST days), and shorter buckets are fixed
widths counted from each local midnight, so hourly buckets of a DST day number 23 or 25.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from emma.telemetry.v1 import telemetry_pb2

from services.platform.migrations import Conn
from services.telemetry.buckets import ROLLUP_BUCKET

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
NEVER = dt.datetime(9999, 12, 31, tzinfo=UTC)
BEGINNING = dt.datetime(1, 1, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    value: float
    count: int


def floor_to(t: dt.datetime, width: dt.timedelta) -> dt.datetime:
    return EPOCH + ((t - EPOCH) // width) * width


def local_bounds(start: dt.datetime, end: dt.datetime, width: dt.timedelta, tz: ZoneInfo) -> list[dt.datetime]:
    """Bucket boundaries aligned to local midnights covering [start, end), in UTC."""
    day = start.astimezone(tz).date()
    last_day = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    bounds: list[dt.datetime] = []
    days_per_bucket = max(1, width // DAY) if width >= DAY else 0
    while day <= last_day:
        midnight = dt.datetime.combine(day, dt.time(), tz).astimezone(UTC)
        if days_per_bucket:
            bounds.append(midnight)
            day += dt.timedelta(days=days_per_bucket)
            continue
        next_midnight = dt.datetime.combine(day + DAY, dt.time(), tz).astimezone(UTC)
        t = midnight
        while t < next_midnight:
            bounds.append(t)
            t += width
        day += DAY
    bounds.append(dt.datetime.combine(day, dt.time(), tz).astimezone(UTC))
    # Keep only the buckets overlapping [start, end).
    first = max(i for i, b in enumerate(bounds) if i == 0 or b <= start)
    last = min(i for i, b in enumerate(bounds) if b >= end or i == len(bounds) - 1)
    return bounds[first : last + 1]


def zone_is_on_grid(tz: ZoneInfo, width: dt.timedelta, start: dt.datetime, end: dt.datetime) -> bool:
    """True when local boundaries of this width coincide with the UTC grid over the period."""
    for t in (start, end):
        offset = t.astimezone(tz).utcoffset() or dt.timedelta()
        if offset % width:
            return False
    return DAY % width == dt.timedelta()


_AGG_SQL = {
    telemetry_pb2.AGGREGATION_AVERAGE: "sum(sm) / sum(n)",
    telemetry_pb2.AGGREGATION_UNSPECIFIED: "sum(sm) / sum(n)",
    telemetry_pb2.AGGREGATION_MINIMUM: "min(mn)",
    telemetry_pb2.AGGREGATION_MAXIMUM: "max(mx)",
    telemetry_pb2.AGGREGATION_LAST: "(array_agg(lv ORDER BY lt DESC))[1]",
    telemetry_pb2.AGGREGATION_COUNT: "sum(n)::float8",
}

# The three sources as one row shape: (bucket, min, max, sum, count, last_time, last_value).
# {bucket} is the SQL expression giving each row's query bucket; {join} restricts to query buckets.
_PARTS = """
  SELECT {bucket_h} AS lo, r.min_value AS mn, r.max_value AS mx, r.sum_value AS sm, r.count AS n,
         r.last_time AS lt, r.last_value AS lv
    FROM telemetry.rollup_1h r {join_h}
   WHERE r.series_id = $1 AND r.bucket >= $2::timestamptz AND r.bucket < least($3::timestamptz, $4::timestamptz)
  UNION ALL
  SELECT {bucket_q}, r.min_value, r.max_value, r.sum_value, r.count, r.last_time, r.last_value
    FROM telemetry.rollup_15m r {join_q}
   WHERE r.series_id = $1 AND r.bucket >= greatest($2::timestamptz, $4::timestamptz)
     AND r.bucket < least($3::timestamptz, $5::timestamptz)
  UNION ALL
  SELECT {bucket_s}, s.value, s.value, s.value, 1, s.time, s.value
    FROM telemetry.samples s {join_s}
   WHERE s.series_id = $1 AND s.time >= greatest($2::timestamptz, $5::timestamptz) AND s.time < $3::timestamptz
"""


def _fixed_width_sql(agg: str) -> str:
    def b(col: str) -> str:
        return f"date_bin($6::interval, {col}, timestamptz 'epoch')"

    parts = _PARTS.format(
        bucket_h=b("r.bucket"), join_h="", bucket_q=b("r.bucket"), join_q="", bucket_s=b("s.time"), join_s=""
    )
    return f"SELECT lo, {agg} AS value, sum(n)::bigint AS n FROM ({parts}) p GROUP BY lo ORDER BY lo"


def _bounds_sql(agg: str) -> str:
    def join(col: str) -> str:
        return f"JOIN unnest($6::timestamptz[], $7::timestamptz[]) AS q(lo, hi) ON {col} >= q.lo AND {col} < q.hi"

    parts = _PARTS.format(
        bucket_h="q.lo",
        join_h=join("r.bucket"),
        bucket_q="q.lo",
        join_q=join("r.bucket"),
        bucket_s="q.lo",
        join_s=join("s.time"),
    )
    return f"SELECT lo, {agg} AS value, sum(n)::bigint AS n FROM ({parts}) p GROUP BY lo ORDER BY lo"


# Buckets not rolled up yet: dirty ones, and (TimescaleDB path) those whose refresh is under way.
_FIRST_DIRTY = """
SELECT min(bucket) FROM (
    SELECT bucket FROM telemetry.rollup_dirty WHERE edge_pk = $1
    UNION ALL
    SELECT bucket FROM telemetry.rollup_refreshing WHERE edge_pk = $1) d
"""


@dataclass(frozen=True)
class Plan:
    """How one series' buckets are computed."""

    bounds: list[dt.datetime] | None  # explicit boundaries (calendar buckets), or None for fixed width
    width: dt.timedelta
    first: dt.datetime
    last: dt.datetime  # end of the last bucket
    use_rollups: bool
    use_hour_rollup: bool

    @property
    def bucket_count(self) -> int:
        if self.bounds is not None:
            return len(self.bounds) - 1
        return (self.last - self.first) // self.width


def plan(start: dt.datetime, end: dt.datetime, width: dt.timedelta, tz: ZoneInfo | None) -> Plan:
    on_quarter_grid = width % ROLLUP_BUCKET == dt.timedelta()
    if tz is not None and not (width < DAY and zone_is_on_grid(tz, width, start, end)):
        bounds = local_bounds(start, end, width, tz)
        on_hours = all(b.minute == 0 and b.second == 0 for b in bounds)
        return Plan(bounds, width, bounds[0], bounds[-1], on_quarter_grid, on_quarter_grid and on_hours)
    first = floor_to(start, width)
    last = floor_to(end - dt.timedelta(microseconds=1), width) + width
    return Plan(None, width, first, last, on_quarter_grid, width % HOUR == dt.timedelta())


async def query_series(conn: Conn, series_id: int, edge_pk: int, p: Plan, aggregation: int) -> tuple[list[Bucket], int]:
    """Buckets of one series per the plan; returns (buckets, HistorySource)."""
    agg = _AGG_SQL[aggregation]  # type: ignore[index]
    raw_from = BEGINNING
    if p.use_rollups:
        dirty = await conn.fetchval(_FIRST_DIRTY, edge_pk)
        raw_from = dirty if dirty is not None else NEVER
    # Hourly rollups answer whole hours before the first dirty quarter; 15-minute rollups the rest of
    # the clean part; raw rows everything from the first dirty quarter on.
    if not p.use_hour_rollup:
        hour_cut = BEGINNING
    elif raw_from == NEVER:
        hour_cut = NEVER
    else:
        hour_cut = floor_to(raw_from, HOUR)
    args: list[object] = [series_id, p.first, p.last, hour_cut, raw_from]
    if p.bounds is None:
        rows = await conn.fetch(_fixed_width_sql(agg), *args, p.width)
    else:
        rows = await conn.fetch(_bounds_sql(agg), *args, p.bounds[:-1], p.bounds[1:])
    buckets = [Bucket(r["lo"], float(r["value"]), int(r["n"])) for r in rows]
    if not p.use_rollups:
        source = telemetry_pb2.HISTORY_SOURCE_RAW
    elif p.use_hour_rollup:
        source = telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR
    else:
        source = telemetry_pb2.HISTORY_SOURCE_ROLLUP_15_MINUTES
    return buckets, int(source)


async def raw_points(
    conn: Conn, series_id: int, start: dt.datetime, end: dt.datetime, limit: int
) -> list[tuple[dt.datetime, float]]:
    rows = await conn.fetch(
        "SELECT time, value FROM telemetry.samples WHERE series_id = $1 AND time >= $2 AND time < $3 "
        "ORDER BY time LIMIT $4",
        series_id,
        start,
        end,
        limit,
    )
    return [(r["time"], r["value"]) for r in rows]
