"""The weather replay server answers bad queries like Open-Meteo does and takes faults over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx

from launcher.weather_replay import running_weather_replay

DAY = {"start_date": "2026-12-05", "end_date": "2026-12-05", "timezone": "GMT"}


async def test_bad_queries_get_open_meteo_error_bodies() -> None:
    async with running_weather_replay() as server, httpx.AsyncClient(base_url=server.url) as http:
        bad_latitude = await http.get(
            "/v1/forecast", params={"latitude": "95", "longitude": "0", "hourly": "cloud_cover", **DAY}
        )
        unknown = await http.get(
            "/v1/forecast", params={"latitude": "1", "longitude": "0", "hourly": "snow_magic", **DAY}
        )
        backwards = await http.get(
            "/v1/forecast",
            params={"latitude": "1", "longitude": "0", "start_date": "2026-12-05", "end_date": "2026-12-01"},
        )
    for answer in (bad_latitude, unknown, backwards):
        assert answer.status_code == 400
        assert answer.json()["error"] is True
    assert "Given: 95.0" in bad_latitude.json()["reason"]
    assert "snow_magic" in unknown.json()["reason"]


async def test_faults_over_http_with_control() -> None:
    query = {"latitude": "1", "longitude": "0", "hourly": "temperature_2m", **DAY}
    async with running_weather_replay(control=True) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/_replay/faults", json={"status": 429, "count": 2})).status_code == 201
        assert (await http.post("/_replay/faults", json={"count": 1})).status_code == 400  # neither status nor hang
        first = await http.get("/v1/forecast", params=query)
        second = await http.get("/v1/forecast", params=query)
        third = await http.get("/v1/forecast", params=query)
        assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
        assert len(third.json()["hourly"]["temperature_2m"]) == 24
        assert len((await http.get("/_replay/requests")).json()) == 3
        assert (await http.delete("/_replay/faults")).status_code == 204


def test_the_recording_ships_with_the_launcher_package() -> None:
    # `emma up` starts the replay server; an installed distribution has the launcher package and not
    # tests/, so the recording must live inside the package (pyproject's package-data lists it).
    import launcher.weather_replay
    from launcher.weather_replay.app import RECORDING, load_recording

    package = Path(launcher.weather_replay.__file__).parent
    assert RECORDING.is_relative_to(package) and "tests" not in RECORDING.relative_to(package).parts
    assert len(load_recording()["hourly"]["time"]) == 48
