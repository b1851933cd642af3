"""PostgreSQL binary COPY payloads built with numpy, for (series_id, time, value) rows.

Building one Python tuple and one datetime per point costs more CPU than PostgreSQL spends storing
it; a structured big-endian numpy array is the COPY wire format itself, built in a few vector ops.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

# Seconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)

_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("len_series", ">i4"),
        ("series_id", ">i8"),
        ("len_time", ">i4"),
        ("time", ">i8"),
        ("len_value", ">i4"),
        ("value", ">f8"),
    ]
)


def samples_copy_payload(
    series_ids: npt.NDArray[np.int64], times_unix_us: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
) -> bytes:
    """The binary COPY stream for telemetry.samples (series_id bigint, time timestamptz, value float8)."""
    rows = np.empty(len(series_ids), dtype=_ROW)
    rows["fields"] = 3
    rows["len_series"] = 8
    rows["series_id"] = series_ids
    rows["len_time"] = 8
    rows["time"] = times_unix_us - PG_EPOCH_OFFSET_US
    rows["len_value"] = 8
    rows["value"] = values
    return HEADER + rows.tobytes() + TRAILER
