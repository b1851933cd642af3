"""Red Eléctrica's JSON: REData (`mercados/precios-mercados-tiempo-real`: PVPC, id 1001, and the
spot price, id 600) and ESIOS indicators (1001: PVPC per geography).

Times are read from what carries an offset (ESIOS `datetime_utc`, else the offset in `datetime`), so
the day clocks go back has 25 distinct hours and the day they go forward 23. A PVPC that REE has
not published yet (the indicator absent or without values) is missing: no series, not an error.
An error body (`{"errors": [...]}`, `{"message": ...}`) is a DocumentError carrying its text.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.market.model import DocumentError, DocumentKind, MarketDocument, PriceSeries, Product, Slot, Source
from services.market.zones import ES_PENINSULA, REE_GEOGRAPHIES

REDATA_PVPC = "1001"
REDATA_SPOT = "600"
# REData's "precios-mercados-tiempo-real" is the peninsular system's: its PVPC is Península's.
REDATA_GEOGRAPHY = "8741"
ESIOS_PVPC = 1001
_MADRID = ZoneInfo("Europe/Madrid")
# ESIOS names an indicator's time step in "tiempo"; these are the steps its price indicators use.
_ESIOS_STEPS = {
    "hora": timedelta(hours=1),
    "quince minutos": timedelta(minutes=15),
    "cuarto de hora": timedelta(minutes=15),
}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes, document: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(document, "(document)", f"malformed JSON: {str(exc)[:200]}") from None


def error_body(body: Mapping[str, Any], document: str) -> DocumentError | None:
    """The DocumentError an API error body stands for, or None if `body` is not one."""
    errors = body.get("errors")
    if isinstance(errors, list) and "data" not in body and "indicator" not in body:
        texts = []
        for e in errors[:5]:
            if isinstance(e, Mapping):
                texts.append(" ".join(str(e[k]) for k in ("code", "title", "detail") if k in e))
            else:
                texts.append(str(e))
        return DocumentError(document, "errors", "the API answered with an error: " + "; ".join(texts)[:500])
    message = body.get("message")
    if isinstance(message, str) and "data" not in body and "indicator" not in body:
        return DocumentError(document, "message", f"the API answered with an error: {message[:500]}")
    return None


def _time(raw: object, document: str, path: str) -> datetime:
    if not isinstance(raw, str):
        raise DocumentError(document, path, "missing or not a string")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise DocumentError(document, path, f"{raw[:40]!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        # A local time without its offset is ambiguous on the day clocks go back: refuse, never guess.
        raise DocumentError(document, path, f"{raw!r} has no UTC offset")
    return value.astimezone(UTC)


def _value(raw: object, document: str, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise DocumentError(document, path, f"{str(raw)[:40]!r} is not a number")
    return float(raw)


def _revision(raw: object, document: str, path: str) -> int:
    """A revision number from a last-update time: later updates compare greater."""
    return int(_time(raw, document, path).timestamp()) if raw is not None else 0


def _day(start: datetime) -> date:
    return start.astimezone(_MADRID).date()


def _step(starts: list[datetime], document: str, path: str) -> timedelta:
    """The series' resolution: the smallest distance between its times (REData does not state it;
    EMMA asks for time_trunc=hour). Every distance must be a multiple of it: a gap stays a gap."""
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    if not gaps:
        return timedelta(hours=1)
    step = min(gaps)
    if any(g % step for g in gaps):
        raise DocumentError(document, path, f"times are not on a common {step} grid")
    return step


def _slots(pairs: list[tuple[datetime, float]], document: str, path: str) -> tuple[Slot, ...]:
    pairs.sort(key=lambda p: p[0])
    for a, b in itertools.pairwise(pairs):
        if a[0] == b[0]:
            raise DocumentError(document, path, f"two values for {a[0].isoformat()}")
    return tuple(Slot(t, v) for t, v in pairs)


def parse_redata(body: Mapping[str, Any], document: str) -> MarketDocument:
    data = body.get("data")
    included = body.get("included")
    if not isinstance(data, Mapping) or not isinstance(included, list):
        raise DocumentError(document, "data", "not a REData document (data and included expected)")
    series: list[PriceSeries] = []
    revision = _revision(data.get("attributes", {}).get("last-update"), document, "data.attributes.last-update")
    for i, item in enumerate(included):
        path = f"included[{i}]"
        if not isinstance(item, Mapping):
            raise DocumentError(document, path, "not an object")
        ident = str(item.get("id", ""))
        if ident not in (REDATA_PVPC, REDATA_SPOT):
            continue  # another indicator REE adds to this widget: not one EMMA models
        attributes = item.get("attributes")
        if not isinstance(attributes, Mapping):
            raise DocumentError(document, f"{path}.attributes", "missing")
        values = attributes.get("values") or []
        if not isinstance(values, list):
            raise DocumentError(document, f"{path}.attributes.values", "not a list")
        if not values:
            continue  # not published yet (PVPC for tomorrow before about 20:30): missing, not an error
        pairs = []
        for j, v in enumerate(values):
            vpath = f"{path}.attributes.values[{j}]"
            if not isinstance(v, Mapping):
                raise DocumentError(document, vpath, "not an object")
            pairs.append(
                (
                    _time(v.get("datetime"), document, f"{vpath}.datetime"),
                    _value(v.get("value"), document, f"{vpath}.value"),
                )
            )
        slots = _slots(pairs, document, f"{path}.attributes.values")
        pvpc = ident == REDATA_PVPC
        series.append(
            PriceSeries(
                zone=ES_PENINSULA,
                product=Product.PVPC if pvpc else Product.SPOT,
                resolution=_step([s.start for s in slots], document, f"{path}.attributes.values"),
                slots=slots,
                geography=REDATA_GEOGRAPHY if pvpc else "",
            )
        )
    series.sort(key=lambda s: s.product.value)
    starts = [s.slots[0].start for s in series]
    ends = [s.slots[-1].start + s.resolution for s in series]
    interval = (min(starts), max(ends)) if series else None
    day = _day(min(starts)).isoformat() if series else "none"
    return MarketDocument(
        Source.REE_REDATA,
        DocumentKind.PRICES,
        f"redata:{data.get('id', '')}:{day}",
        revision,
        None,
        prices=tuple(series),
        interval=interval,
    )


def parse_esios(body: Mapping[str, Any], document: str) -> MarketDocument:
    indicator = body.get("indicator")
    if not isinstance(indicator, Mapping):
        raise DocumentError(document, "indicator", "not an ESIOS indicator document")
    ident = indicator.get("id")
    if ident != ESIOS_PVPC:
        raise DocumentError(document, "indicator.id", f"indicator {str(ident)[:20]} is not one EMMA reads (1001 PVPC)")
    tiempo = indicator.get("tiempo")
    step_name = ""
    if isinstance(tiempo, list) and tiempo and isinstance(tiempo[0], Mapping):
        step_name = str(tiempo[0].get("name", "")).strip().lower()
    resolution = _ESIOS_STEPS.get(step_name)
    if resolution is None:
        raise DocumentError(document, "indicator.tiempo", f"time step {step_name[:40]!r} is not one EMMA reads")
    values = indicator.get("values")
    if not isinstance(values, list):
        raise DocumentError(document, "indicator.values", "missing or not a list")
    by_geo: dict[str, list[tuple[datetime, float]]] = {}
    for j, v in enumerate(values):
        vpath = f"indicator.values[{j}]"
        if not isinstance(v, Mapping):
            raise DocumentError(document, vpath, "not an object")
        geo = v.get("geo_id")
        if isinstance(geo, bool) or not isinstance(geo, int | str) or str(geo) not in REE_GEOGRAPHIES:
            raise DocumentError(document, f"{vpath}.geo_id", f"{str(geo)[:20]!r} is not a PVPC geography")
        # datetime_utc where ESIOS gives it; else the offset-carrying local time.
        field = "datetime_utc" if v.get("datetime_utc") is not None else "datetime"
        start = _time(v.get(field), document, f"{vpath}.{field}")
        if (start - datetime(2000, 1, 1, tzinfo=UTC)) % resolution:
            raise DocumentError(document, f"{vpath}.{field}", f"{start.isoformat()} is not on the {resolution} grid")
        by_geo.setdefault(str(geo), []).append((start, _value(v.get("value"), document, f"{vpath}.value")))
    series = tuple(
        PriceSeries(
            zone=ES_PENINSULA,
            product=Product.PVPC,
            resolution=resolution,
            slots=_slots(pairs, document, f"indicator.values(geo_id {geo})"),
            geography=geo,
        )
        for geo, pairs in sorted(by_geo.items())
    )
    revision = _revision(indicator.get("values_updated_at"), document, "indicator.values_updated_at")
    if not series:
        # Nothing published for the day asked: missing, like REData's absent PVPC.
        return MarketDocument(Source.REE_ESIOS, DocumentKind.PRICES, f"esios:{ident}:none", revision, None)
    first = min(s.slots[0].start for s in series)
    last = max(s.slots[-1].start for s in series) + resolution
    return MarketDocument(
        Source.REE_ESIOS,
        DocumentKind.PRICES,
        f"esios:{ident}:{_day(first).isoformat()}",
        revision,
        None,
        prices=series,
        interval=(first, last),
    )
