"""SunSpec discovery: find the "SunS" marker, then walk the model chain to the end marker.

The map starts with the two registers 0x5375 0x6E53 ("SunS") at one of a few well-known addresses,
followed by models, each `ID, L, <L registers>`, until a model ID of 0xFFFF. Devices are inconsistent
about whether "40001" in their manual is a PDU address or a 1-based register number, so both the
standard bases and their off-by-one variants are tried.

Each base is probed once, with a short timeout and no retries: many devices do not answer a read at an
address they do not implement (instead of an ILLEGAL DATA ADDRESS exception), so silence at one base
means "not here" and the next base is tried. Only a device silent at every base counts as not
answering (a CommunicationError, reported as the device's communication state); once the marker is
found the chain is walked with the configured timeout and retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from edge_daemon.drivers.base import CommunicationError
from edge_daemon.drivers.modbus.link import ModbusDeviceError, ModbusLink, RetryPolicy
from edge_daemon.drivers.modbus.registers import Function
from edge_daemon.errors import EdgeError

log = logging.getLogger(__name__)

SUNS: Final = (0x5375, 0x6E53)
BASE_ADDRESSES: Final = (40000, 40001, 50000, 50001, 0, 1)
END_MODEL_ID: Final = 0xFFFF
MAX_MODELS: Final = 256  # a chain longer than this is a device bug (or a loop of zero lengths)
# Two registers answer in milliseconds even at 9600 baud; waiting the full timeout (and its retries) at
# each of six bases would make discovery of a device at the last base take many seconds.
PROBE_TIMEOUT_S: Final = 0.5


class DiscoveryError(EdgeError):
    """The device answers but is not (recognisably) a SunSpec device."""


@dataclass(frozen=True, slots=True)
class FoundModel:
    id: int
    address: int  # of its ID register
    length: int  # L: registers after ID and L


@dataclass(frozen=True, slots=True)
class SunSpecMap:
    base: int
    models: tuple[FoundModel, ...]

    def first(self, model_id: int) -> FoundModel | None:
        return next((m for m in self.models if m.id == model_id), None)


def probe_policy(policy: RetryPolicy) -> RetryPolicy:
    """The policy for one marker probe: one attempt, at most PROBE_TIMEOUT_S."""
    return RetryPolicy(timeout_s=min(policy.timeout_s, PROBE_TIMEOUT_S), retries=0, backoff_s=policy.backoff_s)


async def discover(
    link: ModbusLink, unit: int, policy: RetryPolicy, bases: tuple[int, ...] = BASE_ADDRESSES
) -> SunSpecMap:
    """Raises CommunicationError when the device answers at no base, DiscoveryError when it answers
    but no base holds the marker."""
    probe = probe_policy(policy)
    silent: list[tuple[int, CommunicationError]] = []
    for base in bases:
        try:
            marker = await link.read(unit, Function.HOLDING, base, 2, probe)
        except ModbusDeviceError:
            continue  # nothing there on this device: try the next base
        except CommunicationError as exc:
            silent.append((base, exc))  # ignores addresses it lacks: not here either
            log.debug("no answer at SunSpec base", extra={"address": base, "error": str(exc)})
            continue
        if tuple(marker) == SUNS:
            return SunSpecMap(base, await _walk(link, unit, policy, base + 2))
    if len(silent) == len(bases) and silent:
        raise CommunicationError(f"no answer at any SunSpec base ({', '.join(map(str, bases))}): {silent[-1][1]}")
    quiet = f" (no answer at {', '.join(str(b) for b, _ in silent)})" if silent else ""
    raise DiscoveryError(f"no SunS marker at {', '.join(map(str, bases))}{quiet}")


async def _walk(link: ModbusLink, unit: int, policy: RetryPolicy, address: int) -> tuple[FoundModel, ...]:
    models: list[FoundModel] = []
    while len(models) < MAX_MODELS and address + 2 <= 0x10000:
        try:
            model_id, length = await link.read(unit, Function.HOLDING, address, 2, policy)
        except ModbusDeviceError as exc:
            # Some devices end the map without the end marker; what was found so far is usable.
            log.warning("SunSpec chain ends without end marker", extra={"address": address, "error": str(exc)})
            break
        if model_id == END_MODEL_ID:
            break
        models.append(FoundModel(model_id, address, length))
        address += 2 + length
    return tuple(models)
