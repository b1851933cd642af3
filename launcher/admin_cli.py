"""`emma admin` tasks against DATABASE_URL, and the demo organization of `emma up`.

Each task writes an audit row (actor kind SYSTEM, actor "cli:<os user>"), so changes made outside
the API are traceable too. Secrets (a generated password, an edge key) are printed once and never
stored in clear.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import field_mask_pb2

from edge_daemon.private_files import private_dir, restrict_file
from services.errors import ConfigError, ServiceError
from services.identity import (
    AuthConfig,
    Passwords,
    accounts,
    audit_row,
    issue_edge_key,
    organization_exists,
    password_problem,
    revoke_edge_keys_of,
    write_entries,
)
from services.names import ID_PATTERN, EdgeName, parse_edge
from services.platform import db
from services.platform.config import PlatformConfig
from services.platform.migrations import Conn
from services.platform.secrets import local_secret
from services.registry import edge_pk, ensure_edge

DEMO_ORG = "demo"
DEMO_ADMIN = "admin@emma.local"
DEMO_EDGE = EdgeName("demo", "demo", "gw-1")


def _passwords(config: PlatformConfig) -> Passwords:
    return Passwords(*AuthConfig.argon2_from_env())


async def _audit(conn: Conn, org: str | None, task: str, resource: str, details: dict[str, object]) -> None:
    await write_entries(
        conn,
        audit_row(
            [org],
            actor_kind=identity_pb2.ACTOR_KIND_SYSTEM,
            actor=f"cli:{getpass.getuser()}",
            method=f"emma admin {task}",
            resource=resource,
            request_json=json.dumps(details, sort_keys=True, separators=(",", ":")),
            result_code=0,
        ),
    )


def _password_from_env_or_prompt() -> tuple[str, bool]:
    """(password, generated). EMMA_ADMIN_PASSWORD, else a prompt on a terminal, else generated."""
    password = os.environ.get("EMMA_ADMIN_PASSWORD", "")
    if password:
        return password, False
    if sys.stdin.isatty():
        first = getpass.getpass("password (empty: generate one): ")
        if first:
            if getpass.getpass("again: ") != first:
                raise ConfigError("the passwords differ")
            return first, False
    return secrets.token_urlsafe(18), True


async def run_admin(args: argparse.Namespace, config: PlatformConfig) -> int:
    if config.database.url is None:
        raise ConfigError("DATABASE_URL is not set")
    pool = await db.create_pool(config.database)
    try:
        async with pool.acquire() as conn:
            if args.admin_command == "create-org":
                return await _create_org(conn, args)
            if args.admin_command == "create-user":
                return await _create_user(conn, args, _passwords(config))
            if args.admin_command == "create-edge-key":
                return await _create_edge_key(conn, args)
    finally:
        await pool.close()
    raise AssertionError(args.admin_command)


async def _create_org(conn: Conn, args: argparse.Namespace) -> int:
    if not ID_PATTERN.match(args.org_id):
        raise ConfigError(f"{args.org_id!r} is not an organization id (lowercase letters, digits, hyphens)")
    async with conn.transaction():
        if not await accounts.create_org(conn, args.org_id, args.display_name or args.org_id):
            raise ServiceError(f"organizations/{args.org_id} exists already")
        await _audit(conn, args.org_id, "create-org", f"organizations/{args.org_id}", {"org_id": args.org_id})
    print(f"created organizations/{args.org_id}")
    return 0


async def _create_user(conn: Conn, args: argparse.Namespace, passwords: Passwords) -> int:
    email = accounts.normalize_email(args.email)
    if not accounts.EMAIL.match(email):
        raise ConfigError(f"{args.email!r} is not an e-mail address")
    if not await organization_exists(conn, args.org):
        raise ServiceError(f"organizations/{args.org} does not exist (emma admin create-org {args.org})")
    existing = await accounts.user_by_email(conn, email)
    password, generated = ("", False) if existing is not None else _password_from_env_or_prompt()
    if existing is None and (problem := password_problem(password)):
        raise ConfigError(f"the password {problem}")
    role = accounts.ROLES[args.role]
    async with conn.transaction():
        user_id, created = await accounts.ensure_user(
            conn,
            passwords,
            email=email,
            password=password,
            org_id=args.org,
            role=role,
            display_name=args.display_name or "",
            platform_admin=args.platform_admin,
        )
        await _audit(
            conn,
            args.org,
            "create-user",
            f"users/{user_id}",
            {"email": email, "org": args.org, "role": args.role, "platform_admin": args.platform_admin},
        )
    if created:
        print(f"created users/{user_id} ({email}) as {args.role} of organizations/{args.org}")
        if generated:
            print(f"password: {password}  (shown once; change it with UpdateUser)")
    else:
        print(f"users/{user_id} ({email}) exists; now {args.role} of organizations/{args.org}")
    return 0


async def _create_edge_key(conn: Conn, args: argparse.Namespace) -> int:
    try:
        edge = parse_edge(args.edge, "edge")
    except ServiceError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1]) from None
    pk = await edge_pk(conn, edge)
    if pk is None:
        raise ServiceError(f"{edge} does not exist")
    async with conn.transaction():
        key_id, key = await issue_edge_key(conn, pk, args.display_name or "")
        await _audit(conn, edge.org, "create-edge-key", f"{edge}/apiKeys/{key_id}", {"edge": str(edge)})
    print(f"created {edge}/apiKeys/{key_id}")
    print(f"key: {key}  (shown once)")
    return 0


async def ensure_demo(conn: Conn, config: PlatformConfig, say: Callable[[str], None] = print) -> None:
    """The demo organization, its admin and the key of its simulated edge (`emma up`), once.

    The admin's password is EMMA_ADMIN_PASSWORD, or generated into the state folder's 0600 secrets
    file and printed when the admin is created.
    """
    out = say
    state_dir = config.state.state_dir
    from_env = bool(os.environ.get("EMMA_ADMIN_PASSWORD"))
    password = demo_admin_password(config)
    await accounts.create_org(conn, DEMO_ORG, "Demo organization")
    user_id, created = await accounts.ensure_user(
        conn,
        _passwords(config),
        email=DEMO_ADMIN,
        password=password,
        org_id=DEMO_ORG,
        role=accounts.ROLES["admin"],
        display_name="Demo admin",
        platform_admin=True,
    )
    if created:
        await _audit(conn, DEMO_ORG, "up: demo admin", f"users/{user_id}", {"email": DEMO_ADMIN})
        shown = "from EMMA_ADMIN_PASSWORD" if from_env else f"password {password}"
        out(f"emma up: created organizations/{DEMO_ORG} and its admin {DEMO_ADMIN} ({shown}; shown once)")
    else:
        where = "EMMA_ADMIN_PASSWORD" if from_env else f"{state_dir / 'secrets.json'}"
        out(f"emma up: demo admin {DEMO_ADMIN} (password in {where})")
    await ensure_edge_key_file(
        conn,
        DEMO_EDGE,
        Path(state_dir) / "edge-demo" / "edge.key",
        out,
        time_zone="Europe/Berlin",
        latitude_deg=52.52,
        longitude_deg=13.405,
        country_code="DE",
    )


def demo_admin_password(config: PlatformConfig) -> str:
    """EMMA_ADMIN_PASSWORD, else the one generated into the state folder's 0600 secrets file."""
    return os.environ.get("EMMA_ADMIN_PASSWORD") or local_secret(config.state.state_dir, "demo_admin_password", 18)


def simulated_pv_system(site_doc: dict[str, Any], altitude_m: float) -> registry_pb2.PvSystem | None:
    """The PV description of what a site file's simulated inverters (`sim_pv`) produce: one array per
    inverter with its tilt, azimuth, peak power and losses, and their summed peak as the AC limit (a
    simulated inverter never gives more than its peak). None when the site simulates no PV."""
    arrays = []
    limit_w = 0.0
    for device in site_doc.get("devices", []):
        if device.get("type") != "sim_pv":
            continue
        peak_w = float(device["peak_power_w"])
        arrays.append(
            registry_pb2.PvArray(
                tilt_deg=float(device.get("tilt_deg", 30.0)),
                azimuth_deg=float(device.get("azimuth_deg", 180.0)),
                peak_power_kw=peak_w / 1000.0,
                losses_fraction=float(device.get("system_losses", 0.14)),
            )
        )
        limit_w += peak_w
    if not arrays:
        return None
    return registry_pb2.PvSystem(arrays=arrays, inverter_limit_w=limit_w, altitude_m=altitude_m)


DEMO_CALL_TIMEOUT_S = 15.0


async def ensure_demo_pv(
    grpc_address: str,
    password: str,
    sites: list[tuple[str, registry_pb2.PvSystem | None, str]],
    say: Callable[[str], None] = print,
) -> None:
    """Give each demo site (name, PV description, country code) the PV description and country it lacks,
    through the registry's API as the demo admin, so the change is validated and audited like any other.

    A site that has a PV description or a country keeps it: an operator may have changed them. A site
    just described is forecast at once (RunForecast): the forecast scheduler may have run it, without
    PV, in this round already, and the next round can be hours away. A login that fails (the admin's
    password was changed) leaves the sites as they are and says so; `emma up` goes on, as it does when
    that first forecast fails.
    """
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        try:
            login = await identity_pb2_grpc.IdentityServiceStub(channel).Login(
                identity_pb2.LoginRequest(email=DEMO_ADMIN, password=password), timeout=DEMO_CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            say(f"emma up: demo sites' PV descriptions left as they are: login as {DEMO_ADMIN}: {exc.details()}")
            return
        auth = (("authorization", f"Bearer {login.access_token}"),)
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        for name, pv, country in sites:
            site = await registry.GetSite(
                registry_pb2.GetSiteRequest(name=name), metadata=auth, timeout=DEMO_CALL_TIMEOUT_S
            )
            paths = []
            update = registry_pb2.Site(name=name)
            if pv is not None and not site.HasField("pv_system"):
                update.pv_system.CopyFrom(pv)
                paths.append("pv_system")
            if country and not site.country_code:
                update.country_code = country
                paths.append("country_code")
            if not paths:
                continue
            await registry.UpdateSite(
                registry_pb2.UpdateSiteRequest(site=update, update_mask=field_mask_pb2.FieldMask(paths=paths)),
                metadata=auth,
                timeout=DEMO_CALL_TIMEOUT_S,
            )
            kwp = sum(a.peak_power_kw for a in pv.arrays) if pv is not None else 0.0
            say(f"emma up: {name}: set {', '.join(paths)} ({kwp:g} kWp as simulated; {country or 'no country'})")
            try:
                run = await forecast_pb2_grpc.ForecastServiceStub(channel).RunForecast(
                    forecast_pb2.RunForecastRequest(site=name, request_id=f"emma-up-{uuid.uuid4()}"),
                    metadata=auth,
                    timeout=DEMO_CALL_TIMEOUT_S * 4,
                )
                say(f"emma up: {name}: first forecast {run.name}")
            except grpc.aio.AioRpcError as exc:
                say(f"emma up: {name}: no first forecast ({exc.code().name}: {exc.details()}); the scheduler will try")


async def ensure_edge_key_file(
    conn: Conn,
    edge: EdgeName,
    key_file: Path,
    say: Callable[[str], None] = print,
    **site: Any,
) -> None:
    """The edge (with its organization and site) and an API key for it in a 0600 file, once.

    When the file is missing, the edge's older keys are revoked and a new one is written; a present
    file is reused, so a second `emma up` keeps its edges' identities.
    """
    pk = await ensure_edge(conn, edge, **site)
    if key_file.exists():  # noqa: ASYNC240 (one stat of a local file at start-up)
        restrict_file(key_file)  # an earlier release may have left it wider
        return
    async with conn.transaction():
        await revoke_edge_keys_of(conn, pk)
        key_id, key = await issue_edge_key(conn, pk, "emma up demo edge")
        await _audit(conn, edge.org, "up: demo edge key", f"{edge}/apiKeys/{key_id}", {})
    private_dir(key_file.parent)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    say(f"emma up: API key of {edge} written to {key_file}")
