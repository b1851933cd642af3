"""`emma up` creates a demo organization with an admin (password printed once, kept in the 0600
secrets file for re-runs) and the API key of its demo edge; its state folder is 0700 and the files in
it 0600 (also those an earlier run left wider). Its demo sites get a PV description matching their
simulated inverters and a country, once, and the weather replay serves the forecast service, so a
forecast of a demo site has weather."""

from __future__ import annotations

import os
import re
import signal
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from emma.forecast.v1 import forecast_pb2, forecast_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from tests.support.cli_process import EmmaProcess


def _login(port: int, password: str) -> identity_pb2.LoginResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return identity_pb2_grpc.IdentityServiceStub(ch).Login(
            identity_pb2.LoginRequest(email="admin@emma.local", password=password), timeout=10
        )


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _wait_for_file(path: Path, proc: EmmaProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared:\n" + "\n".join(proc.lines)
        time.sleep(0.2)


def _check_demo_forecasts(
    port: int, token: str, sites: list[registry_pb2.Site], proc: EmmaProcess, first_run: bool
) -> None:
    """Each demo site as its simulated devices are (edge_daemon.config.demo_site_dict: one sim_pv of
    8 kW, 30 degrees, south, 14 % losses), set on the first run only and forecast at once, with weather."""
    proc.wait_for("emma up: weather from the replay server on http://127.0.0.1:")
    set_lines = [line for line in proc.lines if ": set pv_system" in line]
    assert len(set_lines) == (2 if first_run else 0), proc.lines
    altitudes = {"demo": 34.0, "madrid": 657.0}
    countries = {"demo": "DE", "madrid": "ES"}
    for site in sites:
        short = site.name.rsplit("/", 1)[1]
        assert site.country_code == countries[short]
        pv = site.pv_system
        assert [(a.tilt_deg, a.azimuth_deg, a.peak_power_kw, a.losses_fraction) for a in pv.arrays] == [
            (30.0, 180.0, 8.0, 0.14)
        ]
        assert (pv.inverter_limit_w, pv.altitude_m) == (8000.0, altitudes[short])
    # Each site described on the first run was forecast at once: its latest PV forecast has weather.
    if first_run:
        for site in sites:
            proc.wait_for(f"emma up: {site.name}: first forecast ")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = forecast_pb2_grpc.ForecastServiceStub(ch)
        for site in sites:
            latest = stub.GetLatestForecast(
                forecast_pb2.GetLatestForecastRequest(site=site.name, kind=forecast_pb2.FORECAST_KIND_PV_POWER),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
            assert len(latest.slots) == 192 and latest.weather_source == "open-meteo", latest.degraded_reasons
            assert not [r for r in latest.degraded_reasons if r.startswith("weather")], latest.degraded_reasons


def _check_demo_plan(port: int, token: str, proc: EmmaProcess) -> None:
    """With the demo's tariffs (launcher/demo_tariffs.py) the optimizer has every price part for the
    Berlin site: a run from the platform's data is planned, or refused for data the demo may lack at
    some moment (a state of charge not yet measured), never for a tariff."""
    proc.wait_for("emma up: demo tariffs for the optimizer (EMMA_OPTIMIZER_NETWORK_TARIFFS")
    request = optimizer_pb2.RunOptimizationRequest(parent="organizations/demo", sites=["organizations/demo/sites/demo"])
    request.horizon.FromSeconds(2 * 3600)  # within the replayed day's prices at any time of day
    refused: Any = None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            run = optimizer_pb2_grpc.OptimizerServiceStub(ch).RunOptimization(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=60
            )
        except grpc.RpcError as exc:
            refused = exc
    if refused is not None:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused
        missing = refused.details() or ""
        assert "missing: " in missing and "EMMA_OPTIMIZER_" not in missing and "tariff" not in missing, missing
        return
    assert run.state == optimizer_pb2.OPTIMIZATION_RUN_STATE_SUCCEEDED, run.failure_message
    assert run.inputs_assembled and run.expected.cost_eur <= run.baseline.cost_eur + 1e-9


def test_emma_up_creates_the_demo_organization_and_admin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        "EMMA_STATE_DIR": str(state),
        "EMMA_GRPC_PORT": "0",
        "EMMA_GATEWAY_PORT": "0",
        "DATABASE_URL": "",
        "EMMA_ADMIN_PASSWORD": "",
        # No desktop for the test's emma up, even on a developer's machine: no browser window opens.
        "DISPLAY": "",
        "WAYLAND_DISPLAY": "",
    }
    password = ""
    for run in (1, 2):
        proc = EmmaProcess("up", env=env, umask=0o022)  # the usual umask: 0755 folders, 0644 files
        try:
            port = int(proc.wait_for("gRPC services on 127.0.0.1:", timeout=120).rsplit(":", 1)[1])
            if run == 1:
                line = proc.wait_for("created organizations/demo and its admin admin@emma.local")
                found = re.search(r"password (\S+);", line)
                assert found is not None, line
                password = found.group(1)
            else:
                line = proc.wait_for("emma up: demo admin admin@emma.local (password in")
                assert password not in line  # printed once only
            proc.wait_for("ready; press Ctrl-C to stop")
            # The REST gateway is a process of its own in front of the services, and answers.
            gateway_pid = int(proc.wait_for("REST gateway pid ").rsplit(" ", 1)[1])
            assert gateway_pid != proc.proc.pid
            base = proc.wait_for("emma up: REST gateway on ").split(" on ", 1)[1].split(" ", 1)[0]
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as reply:
                assert reply.status == 200
            # `emma up` points at the dashboard with the demo login (no display here: it says so).
            dashboard = proc.wait_for("emma up: dashboard at ")
            assert f"at {base}/ (log in as admin@emma.local, password in " in dashboard, dashboard
            proc.wait_for("emma up: no display here")
            login = _login(port, password)
            assert [(m.name.split("/")[1], m.role) for m in login.user.memberships] == [
                ("demo", identity_pb2.ROLE_ADMIN)
            ]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                sites = registry_pb2_grpc.RegistryServiceStub(ch).ListSites(
                    registry_pb2.ListSitesRequest(parent="organizations/demo"),
                    metadata=[("authorization", f"Bearer {login.access_token}")],
                    timeout=10,
                )
            assert [s.name for s in sites.sites] == ["organizations/demo/sites/demo", "organizations/demo/sites/madrid"]
            _check_demo_forecasts(port, login.access_token, sites.sites, proc, first_run=run == 1)
            if run == 1:
                _check_demo_plan(port, login.access_token, proc)
            for edge in ("edge-demo", "edge-gw-2"):
                _wait_for_file(state / edge / "outbox.sqlite-wal", proc)
        finally:
            assert proc.stop(signal.SIGINT) == 0, "\n".join(proc.lines)
        assert not Path(f"/proc/{gateway_pid}").exists(), "the gateway outlived emma up"
        private = [state, state / "edge-demo", state / "edge-gw-2"]
        files = [p for folder in private[1:] for p in folder.iterdir()] + [state / "secrets.json"]
        assert {p.name for p in (state / "edge-demo").iterdir()} >= {
            "site.toml",
            "edge.key",
            "edge.log",
            "outbox.sqlite",
        }
        # As root, the embedded PostgreSQL runs as an unprivileged user that must pass through the state
        # folder to its data (traverse, not list); for everyone else the folder is theirs alone.
        assert _mode(state) == (0o711 if os.geteuid() == 0 else 0o700)
        assert {str(p): _mode(p) for p in private[1:]} == {str(p): 0o700 for p in private[1:]}
        assert {str(p): _mode(p) for p in files} == {str(p): 0o600 for p in files}
        if run == 1:  # as an earlier release left them: the second run narrows them again
            for p in private:
                os.chmod(p, 0o755)
            for p in files:
                os.chmod(p, 0o644)
    secrets_file = state / "secrets.json"
    key_file = state / "edge-demo" / "edge.key"
    for path in (secrets_file, key_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_file.read_text().startswith("emma_")
    assert password in secrets_file.read_text()
