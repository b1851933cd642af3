"""Bad input is a 400 with ErrorInfo at every REST operation, never a 500, a 429 or a silent default.

The matrix is generated from the route table and the request descriptors (like the RBAC matrix in
tests/services/identity/test_rbac_matrix.py): for every operation, every string field it can set
(path variable, query parameter or body field, nested and repeated ones too) gets a NUL byte and
every enum field a number its enum does not define. One stack of the real services behind the real
gateway answers all of them; the services' platform interceptor refuses the values before any
servicer (or PostgreSQL) sees them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from emma.registry.v1 import registry_pb2
from google.protobuf import descriptor as d

from gateway.app import MAX_AUTHORIZATION_BYTES
from gateway.binding import SCALAR_WKT, bind_request, is_map, is_repeated, query_leaf
from gateway.errors import HttpError
from gateway.routes import Route, Variable, build_route_table
from tests.support.gateway import SITE, USER_EMAIL, USER_PASSWORD, Client, Stack, error_of, reason_of

TABLE = build_route_table()
ROUTES = sorted(TABLE.routes, key=lambda r: r.operation_id)
NUL = "bad\x00value"
NOT_IN_ENUM = 999
_FD = d.FieldDescriptor
# Well-known types with their own JSON forms: not walked into.
_OPAQUE = SCALAR_WKT | {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    """One bad value: where it goes (path, query or body) and the field the refusal must name."""

    where: str
    name: str  # the proto field path, e.g. "site.display_name"
    path_override: tuple[str, str] | None = None  # (variable field path, raw segment value)
    query: tuple[tuple[str, str], ...] = ()
    body: Any = None


def _bad_json(f: d.FieldDescriptor) -> Any:
    """The JSON of a bad value for a string or enum field, or None for other kinds."""
    if f.type == _FD.TYPE_STRING:
        value: Any = NUL
    elif f.type == _FD.TYPE_ENUM:
        value = NOT_IN_ENUM
    else:
        return None
    return [value] if is_repeated(f) else value


def _body_cases(
    message: d.Descriptor, bound: set[str], prefix: str, stack: tuple[str, ...]
) -> Iterator[tuple[str, Any]]:
    """(proto path, JSON object) for each bad value reachable in a body of this message type."""
    for f in message.fields:
        path = prefix + f.name
        if path in bound:
            continue
        if is_map(f):
            assert f.message_type is not None
            value_field = f.message_type.fields_by_name["value"]
            if value_field.type == _FD.TYPE_STRING:
                yield path, {f.json_name: {"key": NUL}}
            continue
        if f.message_type is not None:
            if f.message_type.full_name in _OPAQUE or f.message_type.full_name in stack:
                continue
            for inner_path, inner in _body_cases(f.message_type, bound, path + ".", (*stack, f.message_type.full_name)):
                yield inner_path, {f.json_name: [inner] if is_repeated(f) else inner}
            continue
        value = _bad_json(f)
        if value is not None:
            yield path, {f.json_name: value}


def _query_cases(route: Route) -> Iterator[Case]:
    bound = {v.field_path for v in route.variables}
    bound_top = route.bound_top_level_fields

    def walk(message: d.Descriptor, prefix: str, proto_prefix: str, depth: int) -> Iterator[Case]:
        for f in message.fields:
            proto_path = proto_prefix + f.name
            if (depth == 0 and f.name in bound_top) or proto_path in bound:
                continue
            if query_leaf(f):
                value = _bad_json(f)
                if value is not None:
                    raw = str(value[0] if isinstance(value, list) else value)
                    yield Case("query", proto_path, query=((prefix + f.json_name, raw),))
            elif f.message_type is not None and not is_repeated(f) and depth < 2:
                yield from walk(f.message_type, prefix + f.json_name + ".", proto_path + ".", depth + 1)

    if route.body != "*":
        yield from walk(route.method.input_type, "", "", 0)


def cases(route: Route) -> list[Case]:
    out = [Case("path", v.field_path, path_override=(v.field_path, quote(NUL, safe=""))) for v in route.variables]
    out += _query_cases(route)
    bound = {v.field_path for v in route.variables}
    if route.body == "*":
        for name, body in _body_cases(route.method.input_type, bound, "", (route.method.input_type.full_name,)):
            out.append(Case("body", name, body=body))
    elif route.body_field is not None and route.body_field.message_type is not None:
        top = route.body_field.name + "."
        message = route.body_field.message_type
        for name, body in _body_cases(message, bound, top, (message.full_name,)):
            out.append(Case("body", name, body=body))
    return out


def url(route: Route, override: tuple[str, str] | None) -> str:
    """A URL of the route whose resource names lie in organizations/acme, the test user's organization;
    `override` replaces the last wildcard of one variable with a raw (percent-encoded) segment."""
    parts: list[str] = []
    for part in route.template.parts:
        if isinstance(part, Variable):
            segments = [s.text for s in part.segments]
            values = [s if s not in ("*", "**") else "x" for s in segments]
            if segments[:2] == ["organizations", "*"]:
                values[1] = "acme"
            if override is not None and override[0] == part.field_path:
                last = max(i for i, s in enumerate(segments) if s in ("*", "**"))
                values[last] = override[1]
            parts.append("/".join(values))
        else:
            parts.append("x" if part.is_wildcard else part.text)
    path = "/" + "/".join(parts)
    return path + (f":{route.template.verb}" if route.template.verb else "")


def _named(violations: list[str], name: str) -> bool:
    """Whether a BadRequest field (proto path with indexes, or a JSON name) names the field."""
    leaf = name.split(".")[-1]
    camel = leaf.split("_")[0] + "".join(p.title() for p in leaf.split("_")[1:])
    return any(leaf in v or camel in v for v in violations)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.operation_id}" for r in ROUTES])
async def test_every_string_and_enum_field_refuses_bad_values_with_400(route: Route, client: Client) -> None:
    found = cases(route)
    failures = []
    async with client(write_rate_per_s=0.0) as c:
        for case in found:
            target = url(route, case.path_override)
            content = json.dumps(case.body).encode() if case.body is not None else b""
            if route.body and case.body is None:
                content = b"{}"
            response = await c.request(
                route.http_method,
                target,
                params=list(case.query),
                content=content,
                headers={"content-type": "application/json", "accept": "application/json"},
            )
            if response.status_code != 400:
                failures.append(f"{case.where} {case.name}: {response.status_code} {response.text[:300]}")
                continue
            error = error_of(response)
            fields = [
                v["field"]
                for detail in error["details"]
                if detail["@type"].endswith("google.rpc.BadRequest")
                for v in detail["fieldViolations"]
            ]
            if reason_of(error) != "FIELD_INVALID" or not _named(fields, case.name):
                failures.append(f"{case.where} {case.name}: {reason_of(error)} naming {fields}")
    assert not failures, "\n".join(failures)


def test_the_matrix_covers_every_operation_and_kind_of_field() -> None:
    every = [(route, case) for route in ROUTES for case in cases(route)]
    assert {case.where for _, case in every} == {"path", "query", "body"}
    # Every operation with a string or enum input has at least one case (every one of them has).
    assert all(cases(route) for route in ROUTES)
    names = {case.name for _, case in every}
    for expected in ("email", "state", "aggregation", "site.display_name", "fleet_dispatch.action", "channels"):
        assert expected in names, expected


# --------------------------------------------------------------------------- JSON typing


def _bind(method: str, path: str, body: str, query: list[tuple[str, str]] | None = None) -> Any:
    match = TABLE.match(method, path)
    return bind_request(match.route, match.path_values, query or [], body.encode())


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (f"/v1/{SITE}/edges/e/commands", '{"channel": "b/P", "value": true}', "command.value"),
        (f"/v1/{SITE}/edges/e/commands", '{"channel": "b/P", "value": false}', "command.value"),
        ("/v1/organizations/acme/fleetDispatches", '{"action": true}', "fleetDispatch.action"),
        ("/v1/organizations/acme/fleetDispatches", '{"action": 1.5}', "fleetDispatch.action"),
        ("/v1/organizations/acme/fleetDispatches", '{"powerKw": true}', "fleetDispatch.powerKw"),
        (
            "/v1/organizations/acme/deviceProfiles",
            '{"channels": [{"name": "P", "minValue": true}]}',
            "deviceProfile.channels[0].minValue",
        ),
    ],
)
def test_json_booleans_and_fractions_are_not_numbers_or_enums(path: str, body: str, field: str) -> None:
    with pytest.raises(HttpError) as caught:
        _bind("POST", path, body)
    assert caught.value.http_status == 400
    assert caught.value.message.startswith(f"{field}: ")


def test_numbers_and_enum_names_still_bind() -> None:
    request = _bind("POST", f"/v1/{SITE}/edges/e/commands", '{"channel": "b/P", "value": 1}')
    assert request.command.value == 1.0
    # Timestamps and Durations are JSON strings with no wrapped value to type-check.
    timed = '{"channel": "b/P", "value": 1, "issuedTime": "2024-01-01T00:00:00Z", "ttl": "60s"}'
    assert _bind("POST", f"/v1/{SITE}/edges/e/commands", timed).command.ttl.seconds == 60
    dispatch = _bind("POST", "/v1/organizations/acme/fleetDispatches", '{"action": 2, "powerKw": 2.5}')
    assert dispatch.fleet_dispatch.action == 2 and dispatch.fleet_dispatch.power_kw == 2.5


def test_a_patch_body_may_leave_the_name_empty_or_repeat_it() -> None:
    site = "/v1/organizations/acme/sites/s1"
    for body in ('{"name": "", "displayName": "Plant"}', '{"name": "organizations/acme/sites/s1"}'):
        request = _bind("PATCH", site, body)
        assert isinstance(request, registry_pb2.UpdateSiteRequest)
        assert request.site.name == "organizations/acme/sites/s1"
    with pytest.raises(HttpError) as caught:
        _bind("PATCH", site, '{"name": "organizations/acme/sites/other"}')
    assert caught.value.http_status == 400


# --------------------------------------------------------------------------- through the stack


async def test_a_huge_token_is_401_token_invalid_not_429(client: Client) -> None:
    async with client(anonymous=True) as c:
        response = await c.get(f"/v1/{SITE}/latestValues", headers={"authorization": "Bearer " + "a" * 100_000})
    assert response.status_code == 401, response.text
    error = error_of(response)
    assert reason_of(error) == "TOKEN_INVALID"
    assert str(MAX_AUTHORIZATION_BYTES) in error["message"]


async def test_a_token_just_below_the_limit_reaches_the_service(client: Client) -> None:
    async with client(anonymous=True) as c:
        token = "a" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))
        response = await c.get(f"/v1/{SITE}/latestValues", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert reason_of(error_of(response)) == "TOKEN_INVALID"  # the service's verdict on a bad JWT


async def test_login_answers_without_input_only_fields(client: Client) -> None:
    async with client(anonymous=True) as c:
        response = await c.post("/v1/auth:login", json={"email": USER_EMAIL, "password": USER_PASSWORD})
        bad = await c.post("/v1/auth:login", json={"email": USER_EMAIL + "\x00", "password": USER_PASSWORD})
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["email"] == USER_EMAIL
    assert "password" not in user
    assert bad.status_code == 400 and reason_of(error_of(bad)) == "FIELD_INVALID"


HISTORY = f"/v1/{SITE}:queryHistory"
CHANNEL = f"{SITE}/edges/gw/devices/battery_1/channels/Soc"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        # Buckets of 7 minutes from the first instant would start before year 1.
        ({"startTime": "0001-01-01T00:00:00Z", "endTime": "0001-01-02T00:00:00Z", "interval": "420s"}, "FIELD_INVALID"),
        # The last bucket would end after 9999-12-31.
        (
            {"startTime": "9999-12-31T00:00:00Z", "endTime": "9999-12-31T23:00:00Z", "interval": "86400s"},
            "FIELD_INVALID",
        ),
        # Local days before year 1 in a time zone east of Greenwich (the site is in Europe/Madrid).
        (
            {
                "startTime": "0001-01-01T00:00:00Z",
                "endTime": "0001-01-03T00:00:00Z",
                "interval": "86400s",
                "alignToSiteTimeZone": "true",
            },
            "FIELD_INVALID",
        ),
        # Far more buckets than a history answers, refused before they are listed.
        (
            {
                "startTime": "0001-01-01T00:00:00Z",
                "endTime": "9999-12-31T00:00:00Z",
                "interval": "60s",
                "alignToSiteTimeZone": "true",
            },
            "HISTORY_TOO_MANY_POINTS",
        ),
        # An interval wider than the years a timestamp can hold.
        (
            {"startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z", "interval": "315576000000s"},
            "HISTORY_INTERVAL_INVALID",
        ),
        (
            {"startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z", "interval": "31708800s"},
            "HISTORY_INTERVAL_INVALID",
        ),
        # Beyond the Duration range itself.
        (
            {"startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z", "interval": "315576000001s"},
            "FIELD_INVALID",
        ),
        (
            {"startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z", "aggregation": "999"},
            "FIELD_INVALID",
        ),
    ],
)
async def test_history_periods_and_intervals_that_would_overflow_are_400(
    params: dict[str, str], reason: str, client: Client
) -> None:
    async with client() as c:
        response = await c.get(HISTORY, params={"channels": CHANNEL, **params})
    assert response.status_code == 400, response.text
    assert reason_of(error_of(response)) == reason


async def test_the_first_and_last_representable_days_still_answer(client: Client) -> None:
    async with client() as c:
        first = await c.get(
            HISTORY,
            params={
                "channels": CHANNEL,
                "startTime": "0001-01-01T00:00:00Z",
                "endTime": "0001-01-02T00:00:00Z",
                "interval": "3600s",
            },
        )
        raw = await c.get(
            HISTORY,
            params={"channels": CHANNEL, "startTime": "0001-01-01T00:00:00Z", "endTime": "9999-12-31T00:00:00Z"},
        )
    assert first.status_code == 200, first.text
    assert first.json()["series"][0]["points"] == []
    assert raw.status_code == 200, raw.text
    assert len(raw.json()["series"][0]["points"]) == 30  # the 30 samples the stack pushed


async def test_export_with_a_huge_interval_is_400(stack: Stack, client: Client) -> None:
    async with client() as c:
        response = await c.get(
            f"/v1/{SITE}:exportTelemetry",
            params={
                "startTime": "2024-01-01T00:00:00Z",
                "endTime": "2024-01-02T00:00:00Z",
                "interval": "315576000000s",
            },
        )
    assert response.status_code == 400, response.text
    assert reason_of(error_of(response)) == "FIELD_INVALID"
