"""`emma up`: the whole stack on one machine.

Embedded PostgreSQL under the state folder (unless DATABASE_URL is set), migrations, every cloud
service in one gRPC server, the REST gateway as a process of its own (`emma gateway`: on a machine
with two cores the gateway and the services each get one, instead of sharing the core of one
Python process; the REST API served about half of what it does when split), a demo organization with its admin,
and two simulated sites whose edge daemons run as separate processes with their own API keys. With
`--workers N` (EMMA_GRPC_WORKERS) N-1 more `emma serve all` processes share the gRPC port. Ctrl-C
stops everything; a second run reuses the data, the keys and the edges' outboxes.

Market data: unless EMMA_ENTSOE_TOKEN is set (then the real APIs, or the EMMA_*_URL given, are used),
the market replay server (launcher/market_replay) runs in this process on a free loopback port with
`redate` on, so the demo has prices for today, and fresh random tokens that are good for nothing else;
the market fetch scheduler, a background worker of the market service that hosted_services starts
as `emma serve market` does, fetches from it.

Weather: unless EMMA_WEATHER_URL is set, the weather replay server (launcher/weather_replay) runs in
this process on a free loopback port and EMMA_WEATHER_URL points the forecast service at it, so the
demo's PV forecasts have weather without internet. The demo sites get a PV description matching
their simulated inverters and a country code (for the load model's holidays), so every kind of
forecast can be made for them.

Tariffs: the EMMA_OPTIMIZER_* price parts not set get the demo's round figures for Germany and Spain
(launcher/demo_tariffs.py), so the optimizer can plan the demo sites from the platform's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.collector import tune_garbage_collector
from core.errors import EmmaError
from core.stop_with_parent import child_env
from edge_daemon.config import demo_site_dict
from edge_daemon.private_files import open_private_append, restrict_dir
from edge_daemon.site_toml import write_site_toml
from gateway.config import GatewayConfig
from launcher.admin_cli import (
    DEMO_ADMIN,
    DEMO_EDGE,
    demo_admin_password,
    ensure_demo,
    ensure_demo_pv,
    ensure_edge_key_file,
    simulated_pv_system,
)
from launcher.demo_tariffs import demo_tariffs
from launcher.market_replay import ReplayServer
from launcher.open_browser import open_dashboard
from launcher.pg_watch import embedded_postgres_kept_running
from launcher.ports import check_free
from launcher.restarts import RestartBudget
from launcher.state_lock import hold_state_folder
from launcher.weather_replay import running_weather_replay
from services import catalog
from services.cloud import further_workers, hosted_services
from services.forecast import start_model_process
from services.names import EdgeName
from services.platform.config import PlatformConfig
from services.platform.embedded_pg import EmbeddedPostgres, start_embedded_postgres
from services.platform.runtime import Runtime
from services.platform.server import wait_for_shutdown_signal

EMMA = str(Path(sys.executable).with_name("emma"))
EDGE_STOP_GRACE_S = 10.0
# A daemon that died is started again after this pause (a crash at start does not spin).
EDGE_RESTART_DELAY_S = 1.0


@dataclass(frozen=True)
class DemoSite:
    edge: EdgeName
    time_zone: str
    latitude_deg: float
    longitude_deg: float
    country_code: str
    altitude_m: float


# Two sites in different bidding zones and time zones, so the demo shows both.
DEMO_SITES = (
    DemoSite(DEMO_EDGE, "Europe/Berlin", 52.52, 13.405, "DE", 34.0),
    DemoSite(EdgeName("demo", "madrid", "gw-2"), "Europe/Madrid", 40.4168, -3.7038, "ES", 657.0),
)


def narrow_state_folder(state_dir: Path, embedded: EmbeddedPostgres) -> None:
    """Undo what pgserver does when started as root: it makes every folder above its data world-readable
    so the unprivileged user it runs PostgreSQL as can reach the data. That user needs to pass through
    the state folder, not to list it: 0711 then, else 0700. Everything inside stays 0700 / 0600."""
    os.chmod(state_dir, 0o711 if embedded.system_user else 0o700)


def _say(line: str) -> None:
    print(line, flush=True)


def edge_dir(state_dir: Path, site: DemoSite) -> Path:
    # The first site keeps the folder earlier releases gave it (edge-demo), so old state is reused.
    return state_dir / ("edge-demo" if site.edge == DEMO_EDGE else f"edge-{site.edge.edge}")


def site_doc(site: DemoSite) -> dict[str, Any]:
    """The simulated site's TOML document, without its cloud section."""
    doc = demo_site_dict(
        period_s=1.0,
        latitude=site.latitude_deg,
        longitude=site.longitude_deg,
        timezone=site.time_zone,
        outbox_path="outbox.sqlite",
    )
    doc["site"]["id"] = site.edge.site
    doc["site"]["name"] = f"Demo site {site.edge.site}"
    doc["telemetry"] = {"batch_interval_s": 1.0}
    return doc


def write_site_file(folder: Path, site: DemoSite, grpc_port: int) -> Path:
    """The site TOML of a simulated edge pointing at this run's gRPC port (rewritten every run)."""
    doc = site_doc(site)
    doc["cloud"] = {
        "endpoint": f"127.0.0.1:{grpc_port}",
        "edge": str(site.edge),
        "key_file": "edge.key",
        "tls": False,
        "reconnect_min_s": 0.5,
        "reconnect_max_s": 5.0,
    }
    return write_site_toml(folder / "site.toml", doc)


async def _start_edge(config: Path) -> asyncio.subprocess.Process:
    log = open_private_append(config.parent / "edge.log")
    try:
        return await asyncio.create_subprocess_exec(
            EMMA,
            "edge",
            "--config",
            str(config),
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=child_env(os.environ),
        )
    finally:
        log.close()


@contextlib.asynccontextmanager
async def edge_processes(configs: list[Path], say: Callable[[str], None]) -> AsyncIterator[None]:
    """`emma edge --config …` per site, each its own process, logging to a file next to its config.

    One that dies is started again, as a service manager (systemd's Restart=) does for a real site's
    daemon; one that keeps dying is left stopped with a line that says so (launcher/restarts.py), and its
    site shows offline.
    """
    procs: dict[Path, asyncio.subprocess.Process] = {}

    async def keep(config: Path) -> None:
        budget = RestartBudget()
        log = config.parent / "edge.log"
        while True:
            code = await procs[config].wait()
            if not budget.spend():
                say(
                    f"emma up: the edge daemon of {config} stopped {budget.deaths} times in {budget.window()}"
                    f" (exit code {code}; log: {log}); leaving it stopped"
                )
                return
            say(f"emma up: the edge daemon of {config} stopped (exit code {code}); starting it again (log: {log})")
            await asyncio.sleep(EDGE_RESTART_DELAY_S)
            procs[config] = await _start_edge(config)
            say(f"  edge daemon pid {procs[config].pid}: {config} (started again)")

    keepers: list[asyncio.Task[None]] = []
    try:
        for config in configs:
            procs[config] = await _start_edge(config)
            say(f"  edge daemon pid {procs[config].pid}: {config} (log: {config.parent / 'edge.log'})")
        keepers = [asyncio.create_task(keep(c), name=f"edge-keeper-{c.parent.name}") for c in configs]
        yield
    finally:
        for keeper in keepers:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                async with asyncio.timeout(EDGE_STOP_GRACE_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


class GatewayProcessError(EmmaError):
    """The REST gateway's process did not start."""


GATEWAY_START_TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def gateway_process(
    config: GatewayConfig, env: Mapping[str, str], say: Callable[[str], None]
) -> AsyncIterator[str]:
    """`emma gateway` in front of `config.target` as a process of its own; yields its base URL.

    Its log lines go where this process's do (stderr). If it stops while the stack runs, `emma up`
    stops too (the API would be gone while everything else looked fine).
    """
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    argv = ["--log-level", level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"]
    argv += ["gateway", "--target", config.target]
    argv += ["--host", config.host, "--port", str(config.port)]
    proc = await asyncio.create_subprocess_exec(
        EMMA,
        *argv,
        # The process environment below the settings (PATH and the like; the settings' EMMA_* win).
        env=child_env({**os.environ, **env}),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    watcher: asyncio.Task[None] | None = None
    try:
        try:
            async with asyncio.timeout(GATEWAY_START_TIMEOUT_S):
                line = (await proc.stdout.readline()).decode()
        except TimeoutError:
            line = ""
        if "http://" not in line:
            raise GatewayProcessError(f"the REST gateway did not start (its process said {line.strip()!r})")
        base = "http://" + line.split("http://", 1)[1].split()[0]

        async def watch() -> None:
            assert proc.stdout is not None
            while await proc.stdout.read(65536):  # drain, so it never blocks on a full pipe
                pass
            code = await proc.wait()
            say(f"emma up: the REST gateway stopped (exit code {code}); stopping")
            os.kill(os.getpid(), signal.SIGTERM)  # the same clean shutdown as Ctrl-C

        watcher = asyncio.create_task(watch(), name="gateway-watch")
        say(f"  REST gateway pid {proc.pid}")
        yield base
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # uvicorn drains open connections first
            try:
                async with asyncio.timeout(EDGE_STOP_GRACE_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def market_sources(env: Mapping[str, str], say: Callable[[str], None]) -> AsyncIterator[dict[str, str]]:
    """The EMMA_* variables pointing the market clients at their sources: `env`'s own when it gives a real
    ENTSO-E token, else those of a replay server started here (stopped when the block exits)."""
    if env.get("EMMA_ENTSOE_TOKEN", "").strip():
        say("emma up: market data from the real sources (EMMA_ENTSOE_TOKEN is set; EMMA_*_URL where given)")
        yield {}
        return
    # Generated per run: the replay checks tokens like the real APIs, and a real token never goes near it.
    entsoe_token, esios_token = "replay-" + secrets.token_hex(16), "replay-" + secrets.token_hex(16)
    server = ReplayServer(entsoe_token, esios_token, redate=True)
    await server.start()
    try:
        say(
            f"emma up: market data from the replay server on {server.url} (recorded days moved onto today; "
            "set EMMA_ENTSOE_TOKEN for the real APIs)"
        )
        yield {
            "EMMA_ENTSOE_TOKEN": entsoe_token,
            "EMMA_ESIOS_TOKEN": esios_token,
            "EMMA_ENTSOE_URL": f"{server.url}/api",
            "EMMA_REDATA_URL": server.url,
            "EMMA_ESIOS_URL": server.url,
        }
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def weather_sources(env: Mapping[str, str], say: Callable[[str], None]) -> AsyncIterator[dict[str, str]]:
    """EMMA_WEATHER_URL for the forecast service: `env`'s own when set, else that of a weather replay
    server started here (stopped when the block exits)."""
    if env.get("EMMA_WEATHER_URL", "").strip():
        say(f"emma up: weather from {env['EMMA_WEATHER_URL']} (EMMA_WEATHER_URL is set)")
        yield {}
        return
    async with running_weather_replay() as server:
        say(
            f"emma up: weather from the replay server on {server.url} (a recorded forecast moved onto the "
            "requested days; set EMMA_WEATHER_URL=https://api.open-meteo.com for the real one)"
        )
        yield {"EMMA_WEATHER_URL": server.url}


async def run_up(config: PlatformConfig) -> None:
    state_dir = config.state.state_dir
    # The gateway forwards the browser's address; the login rate limit must see it, not 127.0.0.1.
    config = dataclasses.replace(config, env={"EMMA_TRUST_FORWARDED_FOR": "1", **config.env})
    gateway_settings = GatewayConfig.from_env(config.env)
    with hold_state_folder(state_dir):
        # Both ports before anything slow starts, so a clash is the first and only thing printed.
        check_free(
            [
                (
                    "the gRPC services'",
                    config.server.host,
                    config.server.port,
                    "choose another with --port or EMMA_GRPC_PORT (0 picks a free one)",
                ),
                (
                    "the REST gateway's",
                    gateway_settings.host,
                    gateway_settings.port,
                    "choose another with --gateway-port or EMMA_GATEWAY_PORT (0 picks a free one)",
                ),
            ]
        )
        await _run_stack(config, state_dir, gateway_settings)


async def _run_stack(config: PlatformConfig, state_dir: Path, gateway_settings: GatewayConfig) -> None:
    # The demo sites are forecast before the stack is ready: the models' process starts now, so its
    # imports (2.7 s on session 18's machine) run beside PostgreSQL's start and the services' instead of
    # inside the first forecast.
    start_model_process()
    embedded: EmbeddedPostgres | None = None
    dsn = config.database.url
    if dsn is None:
        _say(f"emma up: starting embedded PostgreSQL in {state_dir / 'pgdata'}")
        embedded = await asyncio.to_thread(start_embedded_postgres, state_dir)
        # Under the state folder's lock a server already running on its data folder is the leftover of an
        # emma up that was killed (kill -9, a crash): nothing else starts one there, operator commands only
        # attach. This run stops it on its way out like one it started, so Ctrl-C leaves nothing running.
        embedded = dataclasses.replace(embedded, started_here=True)
        dsn = embedded.uri()
        narrow_state_folder(state_dir, embedded)
    workers = None
    try:
        async with (
            market_sources(config.env, _say) as market_env,
            weather_sources(config.env, _say) as weather_env,
        ):
            tariffs = demo_tariffs(config.env, _say)
            services_config = dataclasses.replace(config, env={**config.env, **market_env, **weather_env, **tariffs})
            # With --workers N, N-1 more `emma serve all` processes share the gRPC port (services/cloud.py).
            workers = further_workers(services_config, _worker_command(), dsn)
            async with hosted_services(["all"], services_config, dsn=dsn, apply_migrations=True) as (hosted, runtime):
                if workers is not None:
                    await workers.start(hosted.port)
                    pids = ", ".join(str(pid) for pid in [os.getpid(), *workers.pids])
                    _say(f"emma up: {config.server.workers} gRPC workers share port {hosted.port} (pids {pids})")
                await _serve_stack(config, state_dir, gateway_settings, embedded, hosted.port, runtime)
                if workers is not None:
                    workers.terminate()  # they drain while this process does
        _say("emma up: stopped")
    finally:
        if workers is not None:
            await workers.wait(config.server.shutdown_grace_s + 5)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        sys.stdout.flush()


def _worker_command() -> list[str]:
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    level = level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
    return [sys.executable, "-m", "launcher.cli", "--log-level", level, "serve", "all"]


async def _serve_stack(
    config: PlatformConfig,
    state_dir: Path,
    gateway_settings: GatewayConfig,
    embedded: EmbeddedPostgres | None,
    port: int,
    runtime: Runtime,
) -> None:
    """The demo data, the gateway process and the edge processes in front of the serving services."""
    grpc_address = f"{config.server.host}:{port}"
    site_files = []
    async with runtime.pool.acquire() as conn:
        await ensure_demo(conn, config, _say)
        for site in DEMO_SITES:
            folder = restrict_dir(edge_dir(state_dir, site))
            await ensure_edge_key_file(
                conn,
                site.edge,
                folder / "edge.key",
                _say,
                time_zone=site.time_zone,
                latitude_deg=site.latitude_deg,
                longitude_deg=site.longitude_deg,
                country_code=site.country_code,
            )
            site_files.append(write_site_file(folder, site, port))
    await ensure_demo_pv(
        grpc_address,
        demo_admin_password(config),
        [(str(s.edge.site_name), simulated_pv_system(site_doc(s), s.altitude_m), s.country_code) for s in DEMO_SITES],
        _say,
    )
    gateway_config = dataclasses.replace(gateway_settings, target=grpc_address)
    async with gateway_process(gateway_config, config.env, _say) as base:
        _say(f"emma up: gRPC services on {grpc_address}")
        for spec in catalog.resolve(["all"]):
            state = "serving" if spec.factory else "UNIMPLEMENTED"
            _say(f"  {spec.full_name:<36} {state}")
        _say("  grpc.health.v1.Health and server reflection are on")
        _say(f"emma up: REST gateway on {base} (API docs {base}/docs, OpenAPI {base}/openapi.json)")
        _say(f"emma up: simulated sites {', '.join(str(s.edge.site_name) for s in DEMO_SITES)}:")
        async with edge_processes(site_files, _say):
            where = "embedded" if embedded else "external"
            _say(f"emma up: database {where}; state in {state_dir}")
            _say(f"emma up: log in as {DEMO_ADMIN} (see README: the first five minutes)")
            open_dashboard(base, DEMO_ADMIN, state_dir, config.env, _say)
            tune_garbage_collector()
            # A server of our own that dies is started again (launcher/pg_watch.py); an external one is
            # its operator's, and the services reconnect to it by themselves.
            kept = embedded_postgres_kept_running(embedded, state_dir, _say) if embedded else contextlib.nullcontext()
            async with kept:
                await wait_for_shutdown_signal(ready=lambda: _say("emma up: ready; press Ctrl-C to stop"))
