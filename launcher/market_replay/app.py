"""A stand-in for ENTSO-E, REE REData and ESIOS on one local port: the real paths and query parameters,
the recorded documents as answers, and otherwise what the real APIs answer (no data, bad query, bad
token). EMMA's clients talk to it exactly as to the real APIs; only the base URL differs:

    ENTSO-E  GET /api?securityToken=..&documentType=A44&in_Domain=..&out_Domain=..&periodStart=..&periodEnd=..
    REData   GET /es/datos/mercados/precios-mercados-tiempo-real?start_date=..&end_date=..&time_trunc=hour
    ESIOS    GET /indicators/1001?start_date=..&end_date=..   (header x-api-key)

A request is answered with a recording of the same source, document type (indicator), zones and
contract type whose delivery period overlaps the requested one; the recording is served whole and
unchanged. With `redate` (a demo aid, off by default) a query for days no recording covers gets the
closest matching recording moved by whole days onto the requested days, values unchanged.

Tests can inject faults (an HTTP status, a 429 with Retry-After, a hang, a trickled answer) through the constructor,
`inject()`, or POST /_replay/faults when the control endpoints are on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from launcher.market_replay.recordings import Catalog, Recording, etag, http_date, parse_time, redate

MADRID = ZoneInfo("Europe/Madrid")
MAX_PERIOD = timedelta(days=366)
_PERIOD = re.compile(r"\d{12}")

UNAUTHORIZED_HTML = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.0 Transitional//EN" "http://www.w3.org/TR/REC-html40/loose.dtd">\n'
    '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">\n<title>Error</title>\n'
    "</head>\n<body>Unauthorized. Missing or invalid security token</body>\n</html>\n"
)
REDATA_NO_DATA = {
    "errors": [
        {
            "code": 502,
            "status": "502",
            "title": "Bad response from ESIOS",
            "detail": "There are no data for the selected filters.",
        }
    ]
}


@dataclass(slots=True)
class Fault:
    """What the next `count` matching requests get instead of (or before) their answer."""

    status: int | None = None  # answer this status (503, 429, ...)
    retry_after: str | None = None  # with this Retry-After header
    hang_s: float = 0.0  # wait this long first (or until the server stops)
    trickle_s: float = 0.0  # send the answer in 16 pieces, this long apart (a slow or stalling server)
    count: int = 1
    source: str | None = None  # "entsoe", "redata", "esios"; None: any


@dataclass(frozen=True, slots=True)
class Seen:
    """One API request as the server saw it (the token left out)."""

    source: str
    path: str
    params: dict[str, str]
    status: int
    conditional: bool


@dataclass(slots=True)
class ReplayState:
    catalog: Catalog
    entsoe_token: str
    esios_token: str
    redate: bool = False
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def take_fault(self, source: str) -> Fault | None:
        for fault in self.faults:
            if fault.count > 0 and fault.source in (None, source):
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None


def _params(request: Request) -> dict[str, str]:
    """Query parameters by lower-cased name: the APIs do not care about the case of their names."""
    return {k.lower(): v for k, v in request.query_params.items()}


def _acknowledgement(catalog: Catalog, text: str) -> bytes:
    body = catalog.entsoe_acknowledgement
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(rb"<text>[^<]*</text>", f"<text>{escaped}</text>".encode(), body, count=1)


def _document(request: Request, data: bytes, media_type: str, last_modified: datetime | None) -> Response:
    """A 200 with ETag and Last-Modified, or a 304 when the client's validators still match."""
    tag = etag(data)
    headers = {"ETag": tag}
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if tag in [t.strip() for t in if_none_match.split(",")] or if_none_match.strip() == "*":
            return Response(status_code=304, headers=headers)
    elif last_modified is not None and (since := request.headers.get("if-modified-since")):
        with contextlib.suppress(TypeError, ValueError):
            if last_modified.replace(microsecond=0) <= parsedate_to_datetime(since):
                return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def _pick(
    state: ReplayState, candidates: Sequence[Recording], start: datetime, end: datetime
) -> tuple[bytes, Recording] | None:
    for recording in candidates:
        if recording.overlaps(start, end):
            return recording.data, recording
    if state.redate and candidates:
        # Move the recording whose first day is closest by whole days so it starts on the requested day.
        recording = min(candidates, key=lambda r: abs(r.start - start))
        days = round((start - recording.start) / timedelta(days=1))
        return redate(recording.data, days), recording
    return None


def _entsoe_period(params: dict[str, str]) -> tuple[datetime, datetime] | str:
    raw_start, raw_end = params.get("periodstart", ""), params.get("periodend", "")
    if not raw_start or not raw_end:
        return "Mandatory parameters periodStart and periodEnd (yyyyMMddHHmm, UTC) are missing"
    if not _PERIOD.fullmatch(raw_start) or not _PERIOD.fullmatch(raw_end):
        return "periodStart and periodEnd must be in the format yyyyMMddHHmm"
    try:
        start = datetime.strptime(raw_start, "%Y%m%d%H%M").replace(tzinfo=UTC)
        end = datetime.strptime(raw_end, "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return "periodStart and periodEnd must be valid dates"
    if not start < end:
        return "periodEnd must be after periodStart"
    if end - start > MAX_PERIOD:
        return "The requested time interval exceeds the allowed limit of one year"
    return start, end


async def entsoe(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    params = _params(request)

    def bad(text: str) -> Response:
        return Response(_acknowledgement(state.catalog, text), status_code=400, media_type="application/xml")

    if params.get("securitytoken", "") != state.entsoe_token:
        return Response(UNAUTHORIZED_HTML, status_code=401, media_type="text/html")
    document_type = params.get("documenttype", "")
    if not document_type:
        return bad("Mandatory parameter documentType is missing")
    period = _entsoe_period(params)
    if isinstance(period, str):
        return bad(period)
    in_domain, out_domain = params.get("in_domain", ""), params.get("out_domain", "")
    if document_type in ("A44", "A11", "A61") and not (in_domain and out_domain):
        return bad("Mandatory parameters in_Domain and out_Domain are missing")
    if document_type == "A44" and in_domain != out_domain:
        return bad("For documentType A44 in_Domain and out_Domain must be the same bidding zone")
    contract = params.get("contract_marketagreement.type", "")
    if document_type == "A61" and not contract:
        return bad("Mandatory parameter contract_MarketAgreement.Type is missing")
    candidates = [
        r
        for r in state.catalog.of("entsoe")
        if r.document_type == document_type
        and r.in_domain == in_domain
        and r.out_domain == out_domain
        and (not contract or contract in r.contracts)
    ]
    picked = _pick(state, candidates, *period)
    if picked is None:
        return Response(state.catalog.entsoe_acknowledgement, media_type="application/xml")
    data, recording = picked
    return _document(request, data, "application/xml", recording.last_modified)


def _redata_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=MADRID)).astimezone(UTC)


async def redata(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    params = _params(request)
    lang = request.path_params["lang"]

    def error(code: int, title: str, detail: str) -> Response:
        body = {"errors": [{"code": code, "status": str(code), "title": title, "detail": detail}]}
        return JSONResponse(body, status_code=code)

    if lang not in ("es", "en"):
        return error(404, "Not found", f"Unknown language {lang!r}")
    if not params.get("start_date") or not params.get("end_date") or not params.get("time_trunc"):
        return error(400, "Bad request", "start_date, end_date and time_trunc are mandatory")
    try:
        start, end = _redata_time(params["start_date"]), _redata_time(params["end_date"])
    except ValueError:
        return error(400, "Bad request", "start_date and end_date must be ISO 8601 dates (YYYY-MM-DDTHH:MM)")
    if not start <= end or end - start > MAX_PERIOD:
        return error(400, "Bad request", "end_date must follow start_date, at most one year later")
    candidates = state.catalog.of("redata") if params["time_trunc"] == "hour" else []
    picked = _pick(state, candidates, start, end + timedelta(minutes=1))
    if picked is None:
        return JSONResponse(REDATA_NO_DATA, status_code=502)
    data, recording = picked
    return _document(request, data, "application/json", recording.last_modified)


async def esios(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    params = _params(request)
    if request.headers.get("x-api-key", "") != state.esios_token:
        return JSONResponse({"message": "Forbidden: missing or invalid x-api-key"}, status_code=403)
    indicator = str(request.path_params["indicator"])
    candidates = [r for r in state.catalog.of("esios") if r.document_type == indicator]
    if not candidates:
        return JSONResponse({"message": f"Indicator {indicator} not found"}, status_code=404)
    try:
        start = parse_time(params["start_date"]) if params.get("start_date") else None
        end = parse_time(params["end_date"]) if params.get("end_date") else None
    except ValueError:
        return JSONResponse({"message": "start_date and end_date must be ISO 8601 dates"}, status_code=400)
    if start is None or end is None:
        # Without a period ESIOS answers its latest values: the latest recording stands in for them.
        latest = max(candidates, key=lambda r: r.end)
        return _document(request, latest.data, "application/json", latest.last_modified)
    picked = _pick(state, candidates, start, end + timedelta(seconds=1))
    if picked is None:
        doc = json.loads(candidates[0].data)
        doc["indicator"]["values"] = []
        return JSONResponse(doc)
    data, recording = picked
    return _document(request, data, "application/json", recording.last_modified)


def _trickle(response: Response, pause_s: float, closing: asyncio.Event) -> Response:
    body = bytes(response.body)
    step = max(1, -(-len(body) // 16))

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(body), step):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause_s):
                    await closing.wait()
            yield body[at : at + step]

    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return StreamingResponse(pieces(), status_code=response.status_code, headers=headers)


_SOURCES = {"entsoe": entsoe, "redata": redata, "esios": esios}


def _api(source: str) -> Callable[[Request], Awaitable[Response]]:
    handler = _SOURCES[source]

    async def endpoint(request: Request) -> Response:
        state: ReplayState = request.app.state.replay
        fault = state.take_fault(source)
        if fault is not None and fault.hang_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.hang_s):
                    await state.closing.wait()
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            response = Response(f"replayed fault: HTTP {fault.status}\n", status_code=fault.status, headers=headers)
        else:
            response = await handler(request)
        if fault is not None and fault.trickle_s > 0:
            response = _trickle(response, fault.trickle_s, state.closing)
        params = {k: v for k, v in request.query_params.items() if k.lower() != "securitytoken"}
        conditional = "if-none-match" in request.headers or "if-modified-since" in request.headers
        state.seen.append(Seen(source, request.url.path, params, response.status_code, conditional))
        return response

    return endpoint


async def add_fault(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    try:
        body = await request.json()
        fault = Fault(
            status=int(body["status"]) if body.get("status") is not None else None,
            retry_after=str(body["retry_after"]) if body.get("retry_after") is not None else None,
            hang_s=float(body.get("hang_s", 0.0)),
            trickle_s=float(body.get("trickle_s", 0.0)),
            count=int(body.get("count", 1)),
            source=body.get("source"),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
    if (
        fault.source not in (None, *_SOURCES)
        or fault.count < 1
        or (fault.status is None and fault.hang_s <= 0 and fault.trickle_s <= 0)
    ):
        return JSONResponse({"error": "a fault needs a status or hang_s, count >= 1, a known source"}, status_code=400)
    state.faults.append(fault)
    return JSONResponse(asdict(fault), status_code=201)


async def clear_faults(request: Request) -> Response:
    request.app.state.replay.faults.clear()
    return Response(status_code=204)


async def seen(request: Request) -> Response:
    return JSONResponse([asdict(s) for s in request.app.state.replay.seen])


def create_app(state: ReplayState, control: bool = False) -> Starlette:
    routes = [
        Route("/api", _api("entsoe"), methods=["GET"]),
        Route("/{lang}/datos/mercados/precios-mercados-tiempo-real", _api("redata"), methods=["GET"]),
        Route("/indicators/{indicator:int}", _api("esios"), methods=["GET"]),
    ]
    if control:
        routes += [
            Route("/_replay/faults", add_fault, methods=["POST"]),
            Route("/_replay/faults", clear_faults, methods=["DELETE"]),
            Route("/_replay/requests", seen, methods=["GET"]),
        ]
    app = Starlette(routes=routes)
    app.state.replay = state
    return app
