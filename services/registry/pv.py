"""A site's PV description (Site.pv_system): validation against the contract's stated limits, and
its stored form (a JSON object in app.sites.pv_system)."""

from __future__ import annotations

import json
import math
from typing import Any

from emma.registry.v1 import registry_pb2
from google.protobuf import json_format

from services.errors import invalid_field

# The limits the contract states ([limits: ...] on PvArray and PvSystem); the forecast models accept
# a wider range, so every stored description builds a model.
MAX_ARRAYS = 20
TILT_DEG = (0.0, 90.0)
AZIMUTH_DEG = (0.0, 360.0)
PEAK_POWER_KW = (0.01, 100_000.0)
LOSSES_FRACTION = (0.0, 0.9)
INVERTER_LIMIT_W = (0.0, 1_000_000_000.0)
ALTITUDE_M = (-500.0, 9_000.0)


def _within(field: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    low, high = bounds
    if not (math.isfinite(value) and low <= value <= high):
        raise invalid_field(field, f"must be {low:g}..{high:g}{unit}, got {value!r}")


def validate_pv_system(pv: registry_pb2.PvSystem, prefix: str) -> None:
    """FIELD_INVALID naming the first field outside the contract's limits."""
    if not 1 <= len(pv.arrays) <= MAX_ARRAYS:
        raise invalid_field(f"{prefix}.arrays", f"must hold 1..{MAX_ARRAYS} arrays, got {len(pv.arrays)}")
    for i, array in enumerate(pv.arrays):
        where = f"{prefix}.arrays[{i}]"
        _within(f"{where}.tilt_deg", array.tilt_deg, TILT_DEG, " degrees")
        _within(f"{where}.azimuth_deg", array.azimuth_deg, AZIMUTH_DEG, " degrees")
        _within(f"{where}.peak_power_kw", array.peak_power_kw, PEAK_POWER_KW, " kWp")
        if array.HasField("losses_fraction"):
            _within(f"{where}.losses_fraction", array.losses_fraction, LOSSES_FRACTION, "")
    _within(f"{prefix}.inverter_limit_w", pv.inverter_limit_w, INVERTER_LIMIT_W, " W")
    _within(f"{prefix}.altitude_m", pv.altitude_m, ALTITUDE_M, " m")


def pv_to_json(site: registry_pb2.Site) -> str | None:
    """The stored form of the site's PV description; None when it has none."""
    if not site.HasField("pv_system"):
        return None
    return json.dumps(json_format.MessageToDict(site.pv_system, preserving_proto_field_name=True))


def pv_from_json(stored: Any) -> registry_pb2.PvSystem | None:
    """The stored form back (asyncpg returns jsonb as text); None for NULL."""
    if stored is None:
        return None
    return json_format.ParseDict(json.loads(stored), registry_pb2.PvSystem(), ignore_unknown_fields=True)
