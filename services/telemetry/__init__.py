"""Telemetry: the store of samples (ingest writing, rollups, retention, erasure) and TelemetryService."""

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity", "registry")
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "telemetry.series",
    "telemetry.samples",
    "telemetry.latest",
    "telemetry.batch_ledger",
    "telemetry.rollup_15m",
    "telemetry.rollup_1h",
    "telemetry.rollup_dirty",
    "telemetry.rollup_refreshing",
    "telemetry.storage_info",
    # The SQL functions behind which the plain and the TimescaleDB store differ.
    "telemetry.compress_before",
    "telemetry.delete_series_data",
    "telemetry.drop_partitions_before",
    "telemetry.ensure_partitions",
)
