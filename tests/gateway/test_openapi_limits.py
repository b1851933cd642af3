"""The limits the server enforces are stated in the contracts (`[limits: ...]` in a comment) and become
schema keywords in the OpenAPI document, so generated clients know them; the document's bounds are
the services' own constants, and a request just past a stated bound is refused by the server."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.constraints import Limits, LimitsSyntaxError, Range, parse, without_tags
from gateway.openapi import build_openapi
from gateway.routes import build_route_table
from services.command.validation import MAX_FINAL_STATE_WAIT, MAX_TTL
from services.identity.edge_keys import MAX_DISPLAY_NAME_CHARS
from services.pagination import MAX_PAGE_SIZE
from services.registry.fields import MAX_DISPLAY_NAME
from services.telemetry.servicer import MAX_HISTORY_CHANNELS, MAX_HISTORY_INTERVAL
from tests.support.gateway import SITE, Client, error_of, reason_of

DOCUMENT = build_openapi(build_route_table())
SCHEMAS = DOCUMENT["components"]["schemas"]


def test_the_syntax() -> None:
    assert parse("At most 1000. [limits: 0..1000]") == Limits(value=Range(0, 1000))
    assert parse("[limits: ..1000]") == Limits(value=Range(None, 1000))
    assert parse("[limits: -90.5..90]") == Limits(value=Range(-90.5, 90))
    assert parse("[limits: 1s..86400s]") == Limits(value=Range(1, 86400, seconds=True))
    assert parse("[limits: items 1..100; length ..200]") == Limits(length=Range(None, 200), items=Range(1, 100))
    assert parse("exactly one [limits: required]") == Limits(required=True)
    assert parse("no tag here") == Limits() and parse("no tag").empty
    assert without_tags("At most 1000. [limits: 0..1000]") == "At most 1000."


@pytest.mark.parametrize(
    "text",
    [
        "[limits: 1..0]",
        "[limits: ..]",
        "[limits: 1s..5]",
        "[limits: at most 5]",
        "[limits: maximum 5]",
        "[limits 0..5]",
    ],
)
def test_a_malformed_tag_is_an_error_not_a_dropped_limit(text: str) -> None:
    with pytest.raises(LimitsSyntaxError):
        parse(text, "test.Field")


def _operations() -> list[dict[str, Any]]:
    return [op for item in DOCUMENT["paths"].values() for op in item.values()]


def test_history_fleet_and_registry_limits_are_the_services_constants() -> None:
    history = DOCUMENT["paths"]["/v1/organizations/{organization}/sites/{site}:queryHistory"]["get"]
    query = {p["name"]: p for p in history["parameters"]}
    channels = query["channels"]["schema"]
    assert (channels["minItems"], channels["maxItems"]) == (1, MAX_HISTORY_CHANNELS)
    assert f"to {int(MAX_HISTORY_INTERVAL.total_seconds())}s" in query["interval"]["description"]
    ttl = SCHEMAS["emma.command.v1.Command"]["properties"]["ttl"]["description"]
    assert f"from 1s to {int(MAX_TTL.total_seconds())}s" in ttl
    create = DOCUMENT["paths"]["/v1/organizations/{organization}/sites/{site}/edges/{edge}/commands"]["post"]
    wait = next(p for p in create["parameters"] if p["name"] == "finalStateWait")
    assert f"from 0s to {int(MAX_FINAL_STATE_WAIT.total_seconds())}s" in wait["description"]
    # Exactly one target: a JSON Schema oneOf of the alternatives' required properties.
    assert SCHEMAS["emma.command.v1.FleetDispatch"]["oneOf"] == [
        {"required": ["edges"]},
        {"required": ["site"]},
        {"required": ["wholeOrganization"]},
    ]
    for resource in ("Organization", "Site", "Edge", "Device", "DeviceProfile"):
        assert SCHEMAS[f"emma.registry.v1.{resource}"]["properties"]["displayName"]["maxLength"] == MAX_DISPLAY_NAME
    location = SCHEMAS["emma.common.v1.GeoLocation"]["properties"]
    assert (location["latitudeDeg"]["minimum"], location["latitudeDeg"]["maximum"]) == (-90, 90)
    # The description keeps the comment for people, without the tag.
    assert "[limits" not in SCHEMAS["emma.registry.v1.Site"]["properties"]["displayName"]["description"]


def test_every_page_size_states_the_servers_bounds() -> None:
    page_sizes = [
        (op["operationId"], p["schema"]) for op in _operations() for p in op["parameters"] if p["name"] == "pageSize"
    ]
    assert len(page_sizes) >= 10
    # services.pagination caps every page at MAX_PAGE_SIZE; a method may state a lower cap of its own.
    wrong = [op for op, schema in page_sizes if schema["minimum"] != 0 or not 0 < schema["maximum"] <= MAX_PAGE_SIZE]
    assert not wrong, f"state [limits: 0..N] (N at most {MAX_PAGE_SIZE}) on page_size in: {wrong}"
    # The methods on services.pagination's own cap say so (registry, command, telemetry, identity).
    on_default = {op for op, schema in page_sizes if schema["maximum"] == MAX_PAGE_SIZE}
    assert {"RegistryService_ListSites", "IdentityService_ListUsers", "AuditService_ListAuditEntries"} <= on_default
    key_name = SCHEMAS["emma.identity.v1.EdgeApiKey"]["properties"]["displayName"]
    assert key_name["maxLength"] == MAX_DISPLAY_NAME_CHARS


def _list_url(path: str) -> str:
    """A document path with its ids filled in: the stack's site and edge, "x" elsewhere."""
    values = {"organization": "acme", "site": "gw", "edge": "gw"}
    for name in (
        "organization",
        "site",
        "edge",
        "device",
        "device_profile",
        "user",
        "fleet_dispatch",
        "notification_channel",
    ):
        path = path.replace("{" + name + "}", values.get(name, "x"))
    return path


LISTS = sorted(
    (path, op["operationId"])
    for path, item in DOCUMENT["paths"].items()
    for verb, op in item.items()
    if verb == "get"
    and any(p["name"] == "pageSize" for p in op["parameters"])
    # A list that requires other parameters would refuse this test's requests for those first.
    and not any(p.get("required") and p["in"] == "query" for p in op["parameters"])
)


@pytest.mark.parametrize(("path", "operation"), LISTS, ids=[op for _, op in LISTS])
async def test_a_page_size_just_past_the_stated_bounds_is_refused(path: str, operation: str, client: Client) -> None:
    schema = next(p["schema"] for p in DOCUMENT["paths"][path]["get"]["parameters"] if p["name"] == "pageSize")
    url = _list_url(path)
    assert "{" not in url, url
    async with client() as c:
        for size in (schema["maximum"] + 1, schema["minimum"] - 1):
            response = await c.get(url, params={"pageSize": str(size)})
            assert response.status_code == 400, (size, response.text)
            error = error_of(response)
            # Refused by the gateway (beyond int32) or by the service, naming the field either way.
            assert reason_of(error) == "FIELD_INVALID", error
            assert "page_size" in error["message"] or "pageSize" in error["message"], error
        within = await c.get(url, params={"pageSize": str(schema["maximum"])})
    assert within.status_code in (200, 404), within.text  # a list of a resource the stack lacks: 404


async def test_channels_beyond_the_stated_maximum_are_refused(client: Client) -> None:
    channel = f"{SITE}/edges/gw/devices/battery_1/channels/Soc"
    async with client() as c:
        response = await c.get(
            f"/v1/{SITE}:queryHistory",
            params=[("channels", channel)] * (MAX_HISTORY_CHANNELS + 1)
            + [("startTime", "2024-01-01T00:00:00Z"), ("endTime", "2024-01-02T00:00:00Z")],
        )
    assert response.status_code == 400 and "channels" in error_of(response)["message"]
