"""The recorded documents and what each one answers: source, document type, zones, contract type
and the delivery period it covers, all read from the documents themselves.

The files are our own copies (recordings/SOURCES.md), so they are parsed with the standard library;
nothing here reads a document a client sent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

RECORDINGS = Path(__file__).with_name("recordings")


@dataclass(frozen=True, slots=True)
class Recording:
    source: str  # "entsoe", "redata", "esios"
    path: Path
    data: bytes
    start: datetime
    end: datetime
    document_type: str = ""  # ENTSO-E documentType (A44); ESIOS indicator id; REData "" (one endpoint)
    in_domain: str = ""
    out_domain: str = ""
    contracts: frozenset[str] = field(default_factory=frozenset)
    last_modified: datetime | None = None

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return start < self.end and self.start < end


def etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as the sources write it (2024-10-05T22:00Z, ...T00:00:00.000+01:00) in UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _entsoe(path: Path, data: bytes) -> tuple[str, Recording | None]:
    root = ET.fromstring(data)
    if _local(root.tag) == "Acknowledgement_MarketDocument":
        return "ack", None
    starts: list[datetime] = []
    ends: list[datetime] = []
    fields: dict[str, str] = {}
    contracts: set[str] = set()
    created = None
    for element in root.iter():
        name = _local(element.tag)
        text = (element.text or "").strip()
        if name in ("start", "end") and text:
            (starts if name == "start" else ends).append(parse_time(text))
        elif name in ("type", "in_Domain.mRID", "out_Domain.mRID") and name not in fields:
            fields[name] = text
        elif name == "contract_MarketAgreement.type":
            contracts.add(text)
        elif name == "createdDateTime":
            created = parse_time(text)
    recording = Recording(
        "entsoe",
        path,
        data,
        min(starts),
        max(ends),
        fields.get("type", ""),
        fields.get("in_Domain.mRID", ""),
        fields.get("out_Domain.mRID", ""),
        frozenset(contracts),
        created,
    )
    return "document", recording


def _step(times: list[datetime]) -> timedelta:
    steps = sorted({b - a for a, b in itertools.pairwise(times) if b > a})
    return steps[0] if steps else timedelta(hours=1)


def _json(path: Path, data: bytes) -> Recording:
    doc = json.loads(data)
    if "indicator" in doc:
        indicator = doc["indicator"]
        times = sorted({parse_time(v["datetime_utc"]) for v in indicator["values"]})
        updated = indicator.get("values_updated_at")
        return Recording(
            "esios",
            path,
            data,
            times[0],
            times[-1] + _step(times),
            str(indicator["id"]),
            last_modified=parse_time(updated) if updated else None,
        )
    times = sorted({parse_time(v["datetime"]) for item in doc["included"] for v in item["attributes"]["values"]})
    updated = doc["data"]["attributes"].get("last-update")
    return Recording(
        "redata", path, data, times[0], times[-1] + _step(times), last_modified=parse_time(updated) if updated else None
    )


@dataclass(frozen=True, slots=True)
class Catalog:
    recordings: tuple[Recording, ...]
    entsoe_acknowledgement: bytes

    @classmethod
    def load(cls, folder: Path = RECORDINGS) -> Catalog:
        found: list[Recording] = []
        ack = b""
        for path in sorted(folder.rglob("*")):
            if path.suffix == ".xml":
                kind, recording = _entsoe(path, path.read_bytes())
                if kind == "ack":
                    ack = path.read_bytes()
                elif recording is not None:
                    found.append(recording)
            elif path.suffix == ".json":
                found.append(_json(path, path.read_bytes()))
        if not ack:
            raise FileNotFoundError(f"no ENTSO-E Acknowledgement recording in {folder}")
        return cls(tuple(found), ack)

    def of(self, source: str) -> list[Recording]:
        return [r for r in self.recordings if r.source == source]


_DATE = re.compile(rb"(\d{4}-\d{2}-\d{2})(?=T\d{2}:\d{2})")
_FIRST_MRID = re.compile(rb"(<(?:\w+:)?mRID>)([^<]*)(</(?:\w+:)?mRID>)")


def redate(data: bytes, days: int) -> bytes:
    """The document with every timestamp's date moved by `days`; times of day, offsets and values unchanged.

    A demo aid only: across a daylight-saving change the local hours of a moved day are off by one.
    """

    def move(match: re.Match[bytes]) -> bytes:
        day = datetime.strptime(match.group(1).decode(), "%Y-%m-%d") + timedelta(days=days)
        return day.strftime("%Y-%m-%d").encode()

    moved = _DATE.sub(move, data)
    if days == 0:
        return moved
    # A moved document is another publication: under the recorded id and revision, the store would take
    # a second day moved from one recording for the first one again (UNCHANGED) and keep none of it.
    # ENTSO-E's document id is the root's first mRID; REE's ids already carry the (moved) day.
    return _FIRST_MRID.sub(lambda m: m.group(1) + m.group(2) + b"-d" + str(days).encode() + m.group(3), moved, count=1)
