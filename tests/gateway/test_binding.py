"""Binding an HTTP request to the gRPC request message: path, query, body, proto3 JSON types."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from emma.registry.v1 import registry_pb2
from emma.telemetry.v1 import telemetry_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.binding import bind_request
from gateway.errors import HttpError
from gateway.routes import RouteTable, build_route_table
from gateway.transcode import to_json
from tests.support.gateway import SITE, Client, error_of, reason_of
from tests.support.synthetic import service

TABLE = build_route_table()


def bind(
    method: str, path: str, query: list[tuple[str, str]] | None = None, body: str = "", table: RouteTable = TABLE
) -> Any:
    match = table.match(method, path)
    return bind_request(match.route, match.path_values, query or [], body.encode())


def bad(
    method: str, path: str, query: list[tuple[str, str]] | None = None, body: str = "", table: RouteTable = TABLE
) -> HttpError:
    with pytest.raises(HttpError) as caught:
        bind(method, path, query, body, table)
    assert caught.value.http_status == 400
    return caught.value


def test_path_fills_the_field_and_is_percent_decoded() -> None:
    request = bind("GET", "/v1/organizations/acme/sites/s%C3%BCd/latestValues")
    assert request == telemetry_pb2.ListLatestValuesRequest(parent="organizations/acme/sites/süd")


def test_typed_query_parameters_in_json_and_proto_names() -> None:
    query = [
        ("channels", "organizations/acme/sites/s/edges/e/devices/d/channels/A"),
        ("channels", "organizations/acme/sites/s/edges/e/devices/d/channels/B"),  # repeated by repetition
        ("startTime", "2024-03-31T00:00:00+02:00"),  # RFC 3339 with an offset
        ("end_time", "2024-04-01T00:00:00Z"),  # the proto name works too
        ("interval", "3600s"),
        ("aggregation", "AGGREGATION_MAXIMUM"),  # enums by name
        ("alignToSiteTimeZone", "true"),
    ]
    request = bind("GET", "/v1/organizations/acme/sites/s:queryHistory", query)
    assert list(request.channels) == [query[0][1], query[1][1]]
    assert request.start_time.ToDatetime(dt.UTC) == dt.datetime(2024, 3, 30, 22, tzinfo=dt.UTC)
    assert request.end_time.ToDatetime(dt.UTC) == dt.datetime(2024, 4, 1, tzinfo=dt.UTC)
    assert request.interval.seconds == 3600
    assert request.aggregation == telemetry_pb2.AGGREGATION_MAXIMUM
    assert request.align_to_site_time_zone is True
    assert bind("GET", f"/v1/{SITE}:queryHistory", [("aggregation", "3")]).aggregation == 3  # numbers too


def test_body_field_with_nested_path_field_and_query() -> None:
    request = bind(
        "PATCH",
        "/v1/organizations/acme/sites/s1",
        [("updateMask", "displayName,timeZone"), ("requestId", "r-1")],
        '{"displayName": "Plant 1", "timeZone": "Europe/Madrid"}',
    )
    assert request.site.name == "organizations/acme/sites/s1"  # {site.name=...} from the path
    assert request.site.display_name == "Plant 1"
    assert list(request.update_mask.paths) == ["display_name", "time_zone"]
    assert request.request_id == "r-1"
    # The body may repeat the path's value, but not contradict it.
    same = '{"name": "organizations/acme/sites/s1"}'
    assert bind("PATCH", "/v1/organizations/acme/sites/s1", body=same).site.name == "organizations/acme/sites/s1"
    error = bad("PATCH", "/v1/organizations/acme/sites/s1", body='{"name": "organizations/acme/sites/other"}')
    assert error.message.startswith("site.name: ")


def test_body_field_and_body_star_and_int64_from_strings() -> None:
    body = '{"displayName": "Battery", "channels": [{"name": "Mode", "enumValues": [{"number": "9007199254740993"}]}]}'
    request = bind("POST", "/v1/organizations/acme/deviceProfiles", [("deviceProfileId", "bat")], body)
    assert isinstance(request, registry_pb2.CreateDeviceProfileRequest)
    assert (request.parent, request.device_profile_id) == ("organizations/acme", "bat")
    assert request.device_profile.channels[0].enum_values[0].number == 9007199254740993  # exact beyond 2**53
    login = bind("POST", "/v1/auth:login", body='{"email": "a@b.c", "password": "pw"}')
    assert (login.email, login.password) == ("a@b.c", "pw")
    assert bind("POST", "/v1/auth:logout", body="").ByteSize() == 0  # an empty body is an empty message


def test_responses_are_proto3_json() -> None:
    route = TABLE.match("GET", f"/v1/{SITE}:queryHistory").route
    response = telemetry_pb2.QueryHistoryResponse()
    series = response.series.add(channel="c", unit="W", source=telemetry_pb2.HISTORY_SOURCE_ROLLUP_1_HOUR)
    series.points.add(value=0.0, sample_count=2**62).time.FromDatetime(dt.datetime(2024, 1, 1, 0, 0, 0, 500000))
    assert to_json(route, response) == {
        "series": [
            {
                "channel": "c",
                "unit": "W",
                "source": "HISTORY_SOURCE_ROLLUP_1_HOUR",
                "points": [{"time": "2024-01-01T00:00:00.500Z", "value": 0.0, "sampleCount": str(2**62)}],
            }
        ]
    }


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "field"),
    [
        ("GET", f"/v1/{SITE}/latestValues", [("nope", "1")], "", "nope"),  # unknown parameter
        ("GET", f"/v1/{SITE}/latestValues", [("parent", "x")], "", "parent"),  # the path sets it
        ("GET", f"/v1/{SITE}/channels", [("pageSize", "ten")], "", "pageSize"),
        ("GET", f"/v1/{SITE}/channels", [("pageSize", "1"), ("page_size", "2")], "", "pageSize"),  # twice
        ("GET", f"/v1/{SITE}/channels", [("pageSize", "99999999999")], "", "pageSize"),  # int32 overflow
        ("GET", f"/v1/{SITE}:queryHistory", [("aggregation", "AGGREGATION_MEDIAN")], "", "aggregation"),
        ("GET", f"/v1/{SITE}:queryHistory", [("alignToSiteTimeZone", "yes")], "", "alignToSiteTimeZone"),
        ("GET", f"/v1/{SITE}:queryHistory", [("startTime", "2024-01-01 00:00")], "", "startTime"),
        ("GET", f"/v1/{SITE}:queryHistory", [("interval", "1h")], "", "interval"),
        ("GET", f"/v1/{SITE}/latestValues", [], '{"x": 1}', "body"),  # GET takes no body
        ("POST", "/v1/auth:login", [], '{"email": "a@b.c", "passwort": "x"}', "body"),  # unknown JSON field
        ("POST", "/v1/auth:login", [], '{"email": 5}', "body"),  # wrong JSON type
        ("POST", "/v1/auth:login", [], '{"email": "a@b.c",', "body"),  # not JSON
        ("POST", "/v1/auth:login", [], '["a@b.c"]', "body"),  # not an object
        ("POST", "/v1/auth:login", [("email", "a@b.c")], "{}", "email"),  # body "*" leaves no parameters
        ("POST", f"/v1/{SITE}/edges/e/commands", [], '{"channel": "b/P", "valeu": 1}', "body"),
    ],
)
def test_bad_requests_name_the_field(
    method: str, path: str, query: list[tuple[str, str]], body: str, field: str
) -> None:
    error = bad(method, path, query, body)
    info, bad_request = (json_format.MessageToDict(d) for d in error.details)
    assert info["reason"] == "FIELD_INVALID"
    assert bad_request["fieldViolations"][0]["field"] == field


def test_rest_of_http_proto_on_a_synthetic_contract() -> None:
    table = build_route_table([service()])
    # '**' and a query parameter on a bool.
    request = bind("GET", "/v1/shelves/s1/files/a/b.txt", [("download", "true")], table=table)
    assert (request.name, request.download) == ("shelves/s1/files/a/b.txt", True)
    # Nested query messages with dotted names (JSON or proto spelling), repeated enums, wrappers,
    # int64 and Durations; a custom HTTP verb.
    query = [
        ("filter.title", "Dune"),
        ("filter.nested.after", "2020-01-01T00:00:00Z"),
        ("genres", "GENRE_FICTION"),
        ("genres", "GENRE_POETRY"),
        ("max_age", "1.5s"),
        ("minPages", "-9007199254740993"),
        ("available", "false"),
        ("minRating", "NaN"),
    ]
    request = bind("SEARCH", "/v1/shelves/s1/books", query, table=table)
    assert request.filter.title == "Dune"
    assert request.filter.nested.after.seconds == 1577836800
    assert list(request.genres) == [1, 2]
    assert (request.max_age.seconds, request.max_age.nanos) == (1, 500_000_000)
    assert request.min_pages == -9007199254740993
    assert request.HasField("available") and request.available.value is False
    for name in ("labels", "examples", "filter", "filter.nested"):  # maps, repeated and whole messages
        bad("SEARCH", "/v1/shelves/s1/books", [(name, "x")], table=table)
    # response_body: only that field of the answer is the HTTP body.
    match = table.match("POST", "/v1/shelves/s1:archive")
    archive = bind("POST", "/v1/shelves/s1:archive", body='{"keep": ["a", "b"]}', table=table)
    assert list(archive.keep) == ["a", "b"]
    response = match.route.method.output_type
    from google.protobuf import message_factory

    answer: Message = message_factory.GetMessageClass(response)(count=1)
    answer.archived_books.add(name="shelves/s1/books/b1", pages=12)  # type: ignore[attr-defined]
    assert to_json(match.route, answer) == [
        {"name": "shelves/s1/books/b1", "title": "", "pages": "12", "genre": "GENRE_UNSPECIFIED", "tags": []}
    ]


async def test_bad_requests_over_http_are_aip_193(client: Client) -> None:
    async with client() as c:
        unknown = await c.get(f"/v1/{SITE}/latestValues", params={"bogus": "1"})
        bad_json = await c.post("/v1/auth:login", content=b"{nope", headers={"content-type": "application/json"})
        unknown_field = await c.post("/v1/auth:login", json={"email": "a@b.c", "extra": True})
        form = await c.post("/v1/auth:login", data={"email": "a@b.c"})
    for response in (unknown, bad_json, unknown_field):
        error = error_of(response)
        assert response.status_code == 400 and error["status"] == "INVALID_ARGUMENT"
        assert reason_of(error) == "FIELD_INVALID"
        violations = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
        assert len(violations) == 1
    assert "bogus" in error_of(unknown)["message"]
    assert form.status_code == 415 and reason_of(error_of(form)) == "MEDIA_TYPE_UNSUPPORTED"
