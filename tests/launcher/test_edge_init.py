"""`emma edge init` against a real `emma up`: docs/connect-a-site.md's commands, run word for word (with
the test's gRPC port and `emma`'s path), create the site, its edge and key through the cloud's API and
write a 0700 folder with a 0600 site file and key, from which `emma edge --config` connects and
reports its devices; a second run reuses everything; mistakes are one line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from emma.registry.v1 import registry_pb2, registry_pb2_grpc

from tests.support.cli_process import EMMA, EmmaProcess, run_emma

ROOT = Path(__file__).resolve().parents[2]
EDGE = "organizations/demo/sites/home/edges/gw-1"


def doc_block() -> tuple[str, list[str]]:
    """(the commands before the last, the last one's words): the last runs the edge until stopped."""
    text = (ROOT / "docs" / "connect-a-site.md").read_text()
    block = text.split("<!-- connect:start -->", 1)[1].split("<!-- connect:end -->", 1)[0]
    script = block.strip().removeprefix("```sh").removesuffix("```").strip()
    head, _, last = script.rpartition("\n")
    return head, shlex.split(last)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _init(port: int, password: str, folder: Path, *extra: str) -> tuple[int, str, str]:
    result = run_emma(
        "edge",
        "init",
        "--cloud",
        f"127.0.0.1:{port}",
        "--email",
        "admin@emma.local",
        "--organization",
        "demo",
        "--site",
        "home",
        "--edge",
        "gw-1",
        "--dir",
        str(folder),
        *extra,
        env={"EMMA_PASSWORD": password},
    )
    return result.returncode, result.stdout, result.stderr


def _registry(
    port: int, password: str
) -> tuple[grpc.Channel, registry_pb2_grpc.RegistryServiceStub, tuple[tuple[str, str]]]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    login = identity_pb2_grpc.IdentityServiceStub(channel).Login(
        identity_pb2.LoginRequest(email="admin@emma.local", password=password), timeout=10
    )
    return channel, registry_pb2_grpc.RegistryServiceStub(channel), (("authorization", f"Bearer {login.access_token}"),)


def test_emma_edge_init_connects_a_new_site_to_a_running_stack(tmp_path: Path) -> None:
    state = tmp_path / ".emma"
    env = {
        "EMMA_STATE_DIR": str(state),
        "EMMA_GRPC_PORT": "0",
        "EMMA_GATEWAY_PORT": "0",
        "DATABASE_URL": "",
        "EMMA_ADMIN_PASSWORD": "",
    }
    up = EmmaProcess("up", env=env)
    edge: EmmaProcess | None = None
    try:
        port = int(up.wait_for("gRPC services on 127.0.0.1:", timeout=120).rsplit(":", 1)[1])
        up.wait_for("ready; press Ctrl-C to stop")
        password = json.loads((state / "secrets.json").read_text())["demo_admin_password"]
        folder = tmp_path / "elsewhere"

        # Mistakes are one line each, and nothing is written.
        code, _, err = _init(port, password + "x", folder)
        assert (code, err.strip().count("\n")) == (1, 0), err
        assert "emma edge init: error: logging in as admin@emma.local: UNAUTHENTICATED" in err
        code, _, err = _init(port, password, folder, "--latitude", "52.5")
        assert code == 1, err
        assert "organizations/demo/sites/home is new: give --time-zone, --longitude, --country" in err
        code, _, err = _init(1, password, folder)
        assert code == 1 and "cannot reach the cloud at 127.0.0.1:1" in err, err
        assert not folder.exists()

        # The page's commands, in a folder like a fresh clone's: .emma is the state folder of `emma up`.
        head, run_edge = doc_block()
        assert "127.0.0.1:50051" in head and head.count(".venv/bin/emma") == 1
        script = head.replace("127.0.0.1:50051", f"127.0.0.1:{port}").replace(".venv/bin/emma", EMMA)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            umask=0o022,
            env={k: v for k, v in os.environ.items() if k != "EMMA_PASSWORD"},
        )
        assert result.returncode == 0, result.stderr
        folder = tmp_path / ".emma" / "sites" / "home"
        assert f"created {EDGE}" in result.stdout
        assert f"emma edge --config {Path('.emma/sites/home/site.toml')}" in result.stdout
        key = (folder / "edge.key").read_text()
        assert key.startswith("emma_")
        assert _mode(folder) == 0o700
        assert {p.name: _mode(p) for p in folder.iterdir()} == {"edge.key": 0o600, "site.toml": 0o600}
        site_toml = (folder / "site.toml").read_text()
        assert f'edge = "{EDGE}"' in site_toml and f'endpoint = "127.0.0.1:{port}"' in site_toml

        # Again: everything is reused, no second key.
        site = ("--time-zone", "Europe/Berlin", "--latitude", "52.5", "--longitude", "13.4", "--country", "de")
        code, out, err = _init(port, password, folder, *site)
        assert code == 0, err
        assert "home exists; using it" in out and "keeping its key" in out and "left as it is" in out
        assert (folder / "edge.key").read_text() == key

        assert run_edge[:2] == [".venv/bin/emma", "edge"]
        edge = EmmaProcess(*run_edge[1:], cwd=tmp_path)
        channel, registry, auth = _registry(port, password)
        with channel:
            got = registry.GetSite(registry_pb2.GetSiteRequest(name="organizations/demo/sites/home"), metadata=auth)
            assert (got.time_zone, got.country_code, got.display_name) == ("Europe/Berlin", "DE", "home")
            assert (got.location.latitude_deg, got.location.longitude_deg) == (52.52, 13.405)
            deadline = time.monotonic() + 60
            while True:
                state_now = registry.GetEdge(registry_pb2.GetEdgeRequest(name=EDGE), metadata=auth).connection_state
                devices = registry.ListDevices(registry_pb2.ListDevicesRequest(parent=EDGE), metadata=auth).devices
                if state_now == registry_pb2.EDGE_CONNECTION_STATE_ONLINE and devices:
                    break
                assert time.monotonic() < deadline, "\n".join(edge.lines)
                time.sleep(0.5)
        assert {"battery_1", "pv_1", "grid_1"} <= {d.name.rsplit("/", 1)[1] for d in devices}
        assert (folder / "outbox.sqlite").exists()
    finally:
        if edge is not None:
            assert edge.stop(signal.SIGINT) == 0, "\n".join(edge.lines)
        assert up.stop(signal.SIGINT) == 0, "\n".join(up.lines)
