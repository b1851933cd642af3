"""End to end over HTTP: telemetry pushed through a real EdgeLink stream, read back through the gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import httpx

from tests.support.gateway import EDGE, SITE, Client, Stack, error_of, http_client, push_telemetry, reason_of


def rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


async def test_latest_values_are_proto3_json(stack: Stack, client: Client) -> None:
    async with client() as c:
        r = await c.get(f"/v1/{SITE}/latestValues")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"values", "readTime"}  # lowerCamelCase proto3 JSON names
    by_channel = {v["channel"]: v for v in body["values"]}
    soc = by_channel[f"{EDGE}/devices/battery_1/channels/Soc"]
    assert soc["value"] == stack.pushed["battery_1/Soc"][-1][1]
    assert soc["unit"] == "%"
    assert soc["sampleTime"].endswith("Z")  # RFC 3339 Timestamp
    sample_time = dt.datetime.fromisoformat(soc["sampleTime"].replace("Z", "+00:00")).timestamp()
    assert abs(sample_time - stack.pushed["battery_1/Soc"][-1][0]) < 0.002


async def test_latest_values_of_a_device_through_an_additional_binding(stack: Stack, client: Client) -> None:
    async with client() as c:
        r = await c.get(f"/v1/{EDGE}/devices/meter/latestValues", params={"channelIds": "GridPower"})
    assert r.status_code == 200, r.text
    assert [v["channel"] for v in r.json()["values"]] == [f"{EDGE}/devices/meter/channels/GridPower"]


async def test_history_raw_and_aggregated(stack: Stack, client: Client) -> None:
    samples = stack.pushed["meter/GridPower"]
    channel = f"{EDGE}/devices/meter/channels/GridPower"
    params: list[tuple[str, str]] = [
        ("channels", channel),
        ("startTime", rfc3339(samples[0][0] - 1)),
        ("endTime", rfc3339(samples[-1][0] + 1)),
    ]
    async with client() as c:
        raw = await c.get(f"/v1/{SITE}:queryHistory", params=params)
        hourly = await c.get(
            f"/v1/{SITE}:queryHistory",
            params=[*params, ("interval", "3600s"), ("aggregation", "AGGREGATION_COUNT")],
        )
    assert raw.status_code == 200, raw.text
    (series,) = raw.json()["series"]
    assert series["channel"] == channel and series["unit"] == "W"
    assert series["source"] == "HISTORY_SOURCE_RAW"  # enums by name
    assert [p["value"] for p in series["points"]] == [v for _, v in samples]
    assert {p["sampleCount"] for p in series["points"]} == {"1"}  # int64 as a string
    assert hourly.status_code == 200, hourly.text
    points = hourly.json()["series"][0]["points"]
    assert sum(int(p["sampleCount"]) for p in points) == len(samples)
    assert sum(p["value"] for p in points) == len(samples)  # COUNT aggregates


async def test_list_channels_pages(stack: Stack, client: Client) -> None:
    async with client() as c:
        first = await c.get(f"/v1/{SITE}/channels", params={"pageSize": "1"})
        assert first.status_code == 200, first.text
        token = first.json()["nextPageToken"]
        assert token
        second = await c.get(f"/v1/{SITE}/channels", params={"page_size": "5", "page_token": token})
    assert second.status_code == 200, second.text
    names = [ch["name"] for ch in first.json()["channels"] + second.json()["channels"]]
    assert names == sorted(names) and len(names) == 3  # the hello's channel table: 3 channels
    assert second.json()["nextPageToken"] == ""  # fields without presence are printed with their default


class SseReader:
    """Reads Server-Sent Events off a streamed response; comments (keepalives) are skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def events(self, count: int, timeout: float = 10) -> list[tuple[str, Any]]:
        """(event type, parsed data) of the next `count` events, fewer when the stream ends."""
        out: list[tuple[str, Any]] = []
        event, data = "message", []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    continue
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: "):
                    data.append(line[len("data: ") :])
                elif line == "" and data:
                    out.append((event, json.loads("\n".join(data))))
                    event, data = "message", []
                    if len(out) == count:
                        break
        return out


async def test_live_values_over_sse_then_disconnect_cancels_the_call(stack: Stack, served: Any) -> None:
    async with (
        served() as port,
        http_client(port, stack, timeout=10) as c,
    ):
        before = stack.telemetry.live_streams_cancelled
        stack.telemetry.live_stream_cancelled.clear()
        headers = {"accept": "text/event-stream"}
        async with c.stream("GET", f"/v1/{SITE}:streamLiveValues", headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = SseReader(r)
            ((kind, first),) = await sse.events(1)
            assert kind == "message"
            assert {v["channel"].rsplit("/", 3)[-3] for v in first["values"]} == {"battery_1", "meter"}
            # A new value stored while the stream is open arrives as the next event.
            await push_telemetry(stack.port, stack.edge_key, [(1, time.time(), 1234.5)], seq=2)
            ((kind, update),) = await sse.events(1)
            assert kind == "message"
            assert [
                (v["channel"].endswith("battery_1/channels/ActivePower"), v["value"]) for v in update["values"]
            ] == [(True, 1234.5)]
        # Leaving the `stream` block closed the connection: the service's handler must see it cancelled.
        await asyncio.wait_for(stack.telemetry.live_stream_cancelled.wait(), 10)
        assert stack.telemetry.live_streams_cancelled == before + 1


async def test_live_values_as_ndjson_without_event_stream_accept(stack: Stack, served: Any) -> None:
    async with (
        served() as port,
        http_client(port, stack, timeout=10) as c,
    ):
        params = {"channels": f"{EDGE}/devices/battery_1/channels/Soc"}
        async with c.stream("GET", f"/v1/{SITE}:streamLiveValues", params=params) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            line = await asyncio.wait_for(r.aiter_lines().__anext__(), 10)
    first = json.loads(line)
    assert [v["channel"] for v in first["result"]["values"]] == [params["channels"]]


async def test_mid_stream_error_is_the_last_event(stack: Stack, served: Any) -> None:
    # The stream deadline ends the live stream from the gateway's side after its first message.
    async with (
        served(stream_deadline_s=1.0) as port,
        http_client(port, stack) as c,
    ):
        async with c.stream("GET", f"/v1/{SITE}:streamLiveValues", headers={"accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            events = await SseReader(r).events(10)
        async with c.stream("GET", f"/v1/{SITE}:streamLiveValues") as r:
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert events[0][0] == "message"
    kind, error = events[-1]
    assert kind == "error"
    assert error["error"]["code"] == 504 and error["error"]["status"] == "DEADLINE_EXCEEDED"
    assert "result" in lines[0]
    assert lines[-1]["error"]["status"] == "DEADLINE_EXCEEDED"
    assert all("result" in line for line in lines[:-1])


async def test_stream_error_before_the_first_message_has_its_http_status(client: Client) -> None:
    async with client() as c:
        r = await c.get("/v1/organizations/acme/sites/nowhere:streamLiveValues")
    error = error_of(r)
    assert r.status_code == 404 and error["status"] == "NOT_FOUND"
    assert reason_of(error) == "RESOURCE_NOT_FOUND"
