"""The rollup bucket: the one definition of the 15-minute width that ingest, rollups and history share.

Ingest marks (edge, bucket) dirty, the rollup worker recomputes closed buckets, and history reads
rollups for whole buckets; all three must agree on the width, so every one of them (Python and the
SQL text, which interpolates these constants) takes it from here. Buckets start at the Unix epoch.
Migration 0006 (TimescaleDB continuous aggregates) states the same width in its own SQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

ROLLUP_BUCKET: Final = dt.timedelta(minutes=15)
ROLLUP_BUCKET_S: Final = 900
ROLLUP_BUCKET_US: Final = ROLLUP_BUCKET_S * 1_000_000
# For SQL text: `date_bin({ROLLUP_BUCKET_SQL}, time, timestamptz 'epoch')`, `bucket + {ROLLUP_BUCKET_SQL}`.
ROLLUP_BUCKET_SQL: Final = f"interval '{ROLLUP_BUCKET_S} seconds'"

assert ROLLUP_BUCKET.total_seconds() == ROLLUP_BUCKET_S
