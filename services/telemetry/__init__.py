"""Telemetry: the store of samples (ingest writing, rollups, retention, erasure) and TelemetryService."""

from __future__ import annotations

from typing import Any

from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from services.identity import Access
from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime
from services.telemetry.buckets import ROLLUP_BUCKET_US
from services.telemetry.copy_binary import samples_copy_payload
from services.telemetry.erasure import erase_edge_telemetry
from services.telemetry.ingest import (
    Columns,
    SampleRows,
    copy_samples,
    last_stored_batch_seq,
    last_stored_batch_seqs,
    record_batches,
    store_batches,
)
from services.telemetry.latest import LATEST_OF_DEVICE, latest_of_device, latest_value
from services.telemetry.maintenance import create_partitions, roll_up_closed_buckets
from services.telemetry.series import register_channels, register_channels_of_edges
from services.telemetry.site_history import ChannelMeans, site_channel_means, site_channels
from services.telemetry.watch import (
    ChannelCursor,
    CommittedSample,
    QuietCursor,
    QuietRead,
    last_batch_times,
    latest_times,
    quiet_after,
    samples_after,
)

# What other packages may use of telemetry; everything else in services/telemetry/ is private.
__all__ = [
    "DEPENDS_ON",
    "LATEST_OF_DEVICE",
    "POLICY",
    "ROLLUP_BUCKET_US",
    "SERVICES",
    "TABLES",
    "ChannelCursor",
    "ChannelMeans",
    "Columns",
    "CommittedSample",
    "QuietCursor",
    "QuietRead",
    "SampleRows",
    "copy_samples",
    "create_partitions",
    "erase_edge_telemetry",
    "last_batch_times",
    "last_stored_batch_seq",
    "last_stored_batch_seqs",
    "latest_of_device",
    "latest_times",
    "latest_value",
    "quiet_after",
    "record_batches",
    "register_channels",
    "register_channels_of_edges",
    "roll_up_closed_buckets",
    "samples_after",
    "samples_copy_payload",
    "site_channel_means",
    "site_channels",
    "store_batches",
]

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


def _telemetry(runtime: Runtime) -> Any:
    from services.telemetry.servicer import TelemetryServicer

    return TelemetryServicer(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "telemetry",
        telemetry_pb2,
        "TelemetryService",
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server,
        _telemetry,
    ),
)


_TEL = "/emma.telemetry.v1.TelemetryService/"
# The minimum role of each RPC (services.identity.Access); the catalog registers it with the interceptor.
POLICY: dict[str, Access] = {
    _TEL + "ListLatestValues": Access.VIEWER,
    _TEL + "QueryHistory": Access.VIEWER,
    _TEL + "StreamLiveValues": Access.VIEWER,
    _TEL + "ListChannels": Access.VIEWER,
    _TEL + "ExportSiteTelemetry": Access.VIEWER,
}
