"""The Starlette app of the weather replay: GET /v1/forecast answered from a recording, and (with
`control`) /_replay/faults to make the next requests fail with a status or hang (a timeout).

The recording's hours are re-dated to the requested days: hour k of the answer is hour
k mod N of the recording (N its length), and the `X-Replay-Shift` header says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Beside the code, so an installed `emma up` (which starts this server) finds it: recordings/SOURCES.md.
RECORDING = Path(__file__).with_name("recordings") / "open-meteo_forecast_berlin_2023-01-01_02_gmt.json"
MAX_DAYS = 16


@dataclass(slots=True)
class Fault:
    """What the next `count` forecast requests get instead of their answer."""

    status: int | None = None  # 429, 500, 503, ...
    hang_s: float = 0.0  # wait this long first (a client timeout), or until the server stops
    count: int = 1


@dataclass(slots=True)
class ReplayState:
    recording: dict[str, Any]
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def take_fault(self) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.count -= 1
        if fault.count <= 0:
            self.faults.pop(0)
        return fault


def load_recording(path: Path = RECORDING) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _error(reason: str) -> JSONResponse:
    # Open-Meteo's own error shape and status.
    return JSONResponse({"error": True, "reason": reason}, status_code=400)


def _window(params: dict[str, str]) -> tuple[date, date] | str:
    try:
        if "start_date" in params or "end_date" in params:
            first = date.fromisoformat(params["start_date"])
            last = date.fromisoformat(params["end_date"])
        else:
            days = int(params.get("forecast_days", "7"))
            first = datetime.now(UTC).date()
            last = first + timedelta(days=days - 1)
    except (KeyError, ValueError) as exc:
        return f"Parameter 'start_date' and 'end_date' must be given together as yyyy-mm-dd ({exc})"
    if last < first or (last - first).days >= MAX_DAYS:
        return f"Parameter 'end_date' must be on or after 'start_date' and within {MAX_DAYS} days"
    return first, last


async def forecast(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    params = dict(request.query_params)
    state.requests.append(params)
    fault = state.take_fault()
    if fault is not None:
        if fault.hang_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.hang_s):
                    await state.closing.wait()
        if fault.status is not None:
            return JSONResponse({"error": True, "reason": f"replay fault {fault.status}"}, status_code=fault.status)
    try:
        latitude = float(params["latitude"])
        longitude = float(params["longitude"])
    except (KeyError, ValueError):
        return _error("Parameter 'latitude' and 'longitude' must be given as numbers")
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return _error(f"Latitude must be in range of -90 to 90°. Given: {latitude}.")
    if params.get("timezone", "GMT") not in ("GMT", "UTC"):
        return _error("The replay serves timezone=GMT only")
    window = _window(params)
    if isinstance(window, str):
        return _error(window)
    first, last = window
    rec = state.recording
    hourly_rec: dict[str, list[Any]] = rec["hourly"]
    wanted = [v for v in params.get("hourly", "").split(",") if v]
    for name in wanted:
        if name not in hourly_rec:
            return _error(f"Cannot initialize ForecastVariable from invalid String value {name} for key hourly")
    n = len(hourly_rec["time"])
    hours = ((last - first).days + 1) * 24
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    times = [(start + timedelta(hours=k)).strftime("%Y-%m-%dT%H:%M") for k in range(hours)]
    hourly: dict[str, list[Any]] = {"time": times}
    for name in wanted:
        hourly[name] = [hourly_rec[name][k % n] for k in range(hours)]
    body = {
        "latitude": latitude,
        "longitude": longitude,
        "generationtime_ms": rec.get("generationtime_ms", 0.0),
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": rec.get("elevation", 0),
        "hourly_units": {"time": "iso8601", **{k: rec["hourly_units"].get(k, "") for k in wanted}},
        "hourly": hourly,
    }
    shift = (
        f"recording {hourly_rec['time'][0]}..{hourly_rec['time'][-1]} GMT ({n} h, at "
        f"{rec.get('latitude')},{rec.get('longitude')}) re-dated to {times[0]}..{times[-1]}, repeated every {n} h"
    )
    return JSONResponse(body, headers={"X-Replay-Shift": shift})


async def add_fault(request: Request) -> Response:
    state: ReplayState = request.app.state.replay
    try:
        raw = await request.json()
        fault = Fault(
            status=int(raw["status"]) if raw.get("status") is not None else None,
            hang_s=float(raw.get("hang_s", 0.0)),
            count=int(raw.get("count", 1)),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
    if fault.count < 1 or (fault.status is None and fault.hang_s <= 0):
        return JSONResponse({"error": "a fault needs a status or hang_s > 0, and count >= 1"}, status_code=400)
    state.faults.append(fault)
    return JSONResponse(asdict(fault), status_code=201)


async def clear_faults(request: Request) -> Response:
    request.app.state.replay.faults.clear()
    return Response(status_code=204)


async def seen(request: Request) -> Response:
    return JSONResponse(request.app.state.replay.requests)


def create_app(state: ReplayState, control: bool = False) -> Starlette:
    routes = [Route("/v1/forecast", forecast, methods=["GET"])]
    if control:
        routes += [
            Route("/_replay/faults", add_fault, methods=["POST"]),
            Route("/_replay/faults", clear_faults, methods=["DELETE"]),
            Route("/_replay/requests", seen, methods=["GET"]),
        ]
    app = Starlette(routes=routes)
    app.state.replay = state
    return app
