"""`emma edge init`: connect a new site in one command, through the running cloud's own API.

It logs in as a person with the right to do so (an admin of the organization), creates the site and
its edge unless they exist, issues the edge an API key and writes a folder the edge daemon runs from:
`edge.key` (the key, 0600) and `site.toml` (0600, the site, the cloud endpoint and a ready-made set of
simulated devices to replace with the real ones). The folder is 0700. A second run reuses what
exists: the site and edge in the cloud, the key file and site file in the folder (no new key is issued
while the key file is there), so it can be repeated safely. It goes through the API, not the database,
so the same command works against `emma up` and a cloud elsewhere, with the same checks and audit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from emma.common.v1 import types_pb2
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from core.errors import ConfigError, EmmaError
from edge_daemon.config import demo_site_dict
from edge_daemon.private_files import restrict_dir, write_private_text
from edge_daemon.site_toml import dump_site_toml
from launcher.cloud_client import cloud_channel, failure_text, operator_password, tls_for
from services.names import ID_PATTERN

CALL_TIMEOUT_S = 15.0


class EdgeInitError(EmmaError):
    """The cloud refused or could not be reached; the message says which call and why."""


@dataclass(frozen=True)
class InitRequest:
    cloud: str
    email: str
    password: str
    organization: str
    site: str
    edge: str
    folder: Path
    tls: bool
    ca_file: Path | None = None
    site_name: str = ""
    time_zone: str = ""
    latitude: float | None = None
    longitude: float | None = None
    country: str = ""


def request_from_args(args: argparse.Namespace, env: dict[str, str]) -> InitRequest:
    for flag, value in (("--organization", args.organization), ("--site", args.site), ("--edge", args.edge)):
        if not ID_PATTERN.match(value):
            raise ConfigError(f"{flag} {value!r} is not an id (lowercase letters, digits, hyphens)")
    password = operator_password(env, args.email)
    return InitRequest(
        cloud=args.cloud,
        email=args.email,
        password=password,
        organization=args.organization,
        site=args.site,
        edge=args.edge,
        # Under .emma by default: ignored by git, so the key file cannot be committed by accident.
        folder=args.dir if args.dir is not None else Path(".emma") / "sites" / args.site,
        tls=tls_for(args.cloud, args.tls),
        ca_file=args.ca_file,
        site_name=args.site_name,
        time_zone=args.time_zone,
        latitude=args.latitude,
        longitude=args.longitude,
        country=args.country.upper(),
    )


async def _existing(call: Callable[[], Any]) -> Any | None:
    """The resource, or None when the cloud says NOT_FOUND."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _new_site(req: InitRequest) -> registry_pb2.Site:
    missing = [
        flag
        for flag, value in (
            ("--time-zone", req.time_zone),
            ("--latitude", req.latitude),
            ("--longitude", req.longitude),
            ("--country", req.country),
        )
        if value in ("", None)
    ]
    if missing:
        raise ConfigError(f"organizations/{req.organization}/sites/{req.site} is new: give {', '.join(missing)}")
    assert req.latitude is not None and req.longitude is not None
    return registry_pb2.Site(
        display_name=req.site_name or req.site,
        location=types_pb2.GeoLocation(latitude_deg=req.latitude, longitude_deg=req.longitude),
        time_zone=req.time_zone,
        country_code=req.country,
    )


async def init_edge(req: InitRequest, say: Callable[[str], None] = print) -> Path:
    """Do it; returns the site file's path. Raises ConfigError or EdgeInitError with one clear line."""
    org = f"organizations/{req.organization}"
    site_name = f"{org}/sites/{req.site}"
    edge_name = f"{site_name}/edges/{req.edge}"
    key_file = req.folder / "edge.key"
    site_file = req.folder / "site.toml"
    step = f"logging in as {req.email}"
    async with cloud_channel(req.cloud, req.tls, req.ca_file) as channel:
        try:
            login = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(email=req.email, password=req.password), timeout=CALL_TIMEOUT_S
            )
            auth = (("authorization", f"Bearer {login.access_token}"),)
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            identity = identity_pb2_grpc.IdentityServiceStub(channel)

            step = f"reading {site_name}"
            site = await _existing(
                lambda: registry.GetSite(
                    registry_pb2.GetSiteRequest(name=site_name), metadata=auth, timeout=CALL_TIMEOUT_S
                )
            )
            if site is None:
                step = f"creating {site_name}"
                site = await registry.CreateSite(
                    registry_pb2.CreateSiteRequest(parent=org, site_id=req.site, site=_new_site(req)),
                    metadata=auth,
                    timeout=CALL_TIMEOUT_S,
                )
                say(f"emma edge init: created {site_name}")
            else:
                say(f"emma edge init: {site_name} exists; using it")

            step = f"reading {edge_name}"
            edge = await _existing(
                lambda: registry.GetEdge(
                    registry_pb2.GetEdgeRequest(name=edge_name), metadata=auth, timeout=CALL_TIMEOUT_S
                )
            )
            if edge is None:
                step = f"creating {edge_name}"
                await registry.CreateEdge(
                    registry_pb2.CreateEdgeRequest(
                        parent=site_name, edge_id=req.edge, edge=registry_pb2.Edge(display_name=req.edge)
                    ),
                    metadata=auth,
                    timeout=CALL_TIMEOUT_S,
                )
                say(f"emma edge init: created {edge_name}")
            else:
                say(f"emma edge init: {edge_name} exists; using it")

            restrict_dir(req.folder)
            if key_file.exists():
                say(f"emma edge init: {key_file} exists; keeping its key (delete it for a new one)")
            else:
                step = f"creating an API key for {edge_name}"
                key = await identity.CreateEdgeApiKey(
                    identity_pb2.CreateEdgeApiKeyRequest(
                        parent=edge_name,
                        edge_api_key=identity_pb2.EdgeApiKey(display_name=f"emma edge init ({req.folder})"),
                    ),
                    metadata=auth,
                    timeout=CALL_TIMEOUT_S,
                )
                write_private_text(key_file, key.key + "\n")
                say(f"emma edge init: created {key.name}; key written to {key_file} (0600)")
        except grpc.aio.AioRpcError as exc:
            raise EdgeInitError(failure_text(step, exc, req.cloud)) from None

    if site_file.exists():
        say(f"emma edge init: {site_file} exists; left as it is (delete it to generate it again)")
    else:
        write_private_text(site_file, site_toml(req, site, edge_name))
        say(f"emma edge init: wrote {site_file}")
    say(f"emma edge init: start the edge with: emma edge --config {site_file}")
    return site_file


def site_toml(req: InitRequest, site: registry_pb2.Site, edge_name: str) -> str:
    """The edge's site file: where it is (from the cloud's site), whom it connects to, simulated devices."""
    doc = demo_site_dict(
        period_s=1.0,
        latitude=site.location.latitude_deg,
        longitude=site.location.longitude_deg,
        timezone=site.time_zone,
        outbox_path="outbox.sqlite",
    )
    doc["site"]["id"] = req.site
    doc["site"]["name"] = site.display_name or req.site
    cloud: dict[str, Any] = {"endpoint": req.cloud, "edge": edge_name, "key_file": "edge.key", "tls": req.tls}
    if req.ca_file is not None:
        cloud["ca_file"] = str(req.ca_file.resolve())
    doc["cloud"] = cloud
    header = (
        f"# The edge of {edge_name}, written by `emma edge init`.\n"
        "# The devices below are simulated, so the site runs at once; replace them with the site's real\n"
        "# devices (Modbus, SunSpec, CAN: docs/device-profiles.md). Run: emma edge --config <this file>\n\n"
    )
    return header + dump_site_toml(doc)


async def run_init(args: argparse.Namespace, env: dict[str, str]) -> int:
    await init_edge(request_from_args(args, env))
    return 0
