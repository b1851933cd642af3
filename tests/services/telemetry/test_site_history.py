"""site_channel_means over real ingested samples: the 15-minute means of the chosen channels of every
edge of a site equal the raw rows' averages, whether the buckets were rolled up or not yet (dirty);
a bucket without samples is a gap, not a zero; other channels and other sites stay out."""

from __future__ import annotations

import datetime as dt

import asyncpg

from services.names import SiteName
from services.telemetry import roll_up_closed_buckets, site_channel_means, site_channels
from tests.support.cloud import new_edge
from tests.support.telemetry_data import add_series, ingest_samples, raw_aggregates

UTC = dt.UTC


async def test_means_come_from_rollups_and_raw_rows_alike(db: asyncpg.Connection, migrated_url: str) -> None:
    edge, pk, _ = await new_edge(db, "hist-a", time_zone="UTC")
    other, other_pk, _ = await new_edge(db, "hist-b", time_zone="UTC")
    pv = await add_series(db, pk, "pv_1/ActivePower")
    soc = await add_series(db, pk, "battery_1/Soc", "%")
    elsewhere = await add_series(db, other_pk, "pv_1/ActivePower")
    start = (dt.datetime.now(UTC) - dt.timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        # Two hours of one sample a minute, then a gap of an hour, then one more hour.
        await ingest_samples(pool, pk, pv, start, count=120, step_s=60, seed=1)
        await ingest_samples(pool, pk, soc, start, count=120, step_s=60, seed=2)
        await ingest_samples(pool, other_pk, elsewhere, start, count=120, step_s=60, seed=3)
        while await roll_up_closed_buckets(db, grace_s=0):
            pass
        # Late data after the rollup: these buckets are dirty and read from raw rows.
        await ingest_samples(pool, pk, pv, start + dt.timedelta(hours=3), count=60, step_s=60, seed=4)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM telemetry.rollup_15m WHERE series_id = $1", pv) == 8
    assert await db.fetchval("SELECT count(*) FROM telemetry.rollup_dirty WHERE edge_pk = $1", pk) > 0

    site = edge.site_name
    end = start + dt.timedelta(hours=4)
    got = await site_channel_means(db, site, ["pv_1/ActivePower", "grid_1/ActivePower"], start, end)
    assert [(m.edge, m.channel, m.unit) for m in got] == [(edge, "pv_1/ActivePower", "W")]
    expected = await raw_aggregates(db, pv, start, end, 900, "avg(value)")
    assert len(expected) == 12  # 8 rolled-up buckets, 4 raw ones, none for the hour without samples
    assert [t for t, _ in got[0].means] == [t for t, _, _ in expected]
    for (_, mean), (_, raw, _) in zip(got[0].means, expected, strict=True):
        assert abs(mean - raw) < 1e-6
    assert start + dt.timedelta(hours=2) not in {t for t, _ in got[0].means}

    # Inside the caller's transaction, the same answer from the caller's snapshot.
    async with db.transaction():
        again = await site_channel_means(db, site, ["pv_1/ActivePower"], start, end)
    assert again == got

    assert [c for _, c, _ in await site_channels(db, site)] == ["battery_1/Soc", "pv_1/ActivePower"]
    assert await site_channel_means(db, SiteName("acme", "no-such-site"), ["pv_1/ActivePower"], start, end) == []
    assert await site_channel_means(db, site, [], start, end) == []
    assert other.site_name != site
