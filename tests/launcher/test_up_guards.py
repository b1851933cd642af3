"""`emma up` guards its state folder and its ports before it starts anything.

A second `emma up` on the same state folder used to attach to the first one's embedded PostgreSQL and
stop it on exit, after which the first stack never recovered; a gateway port clash was found only
after PostgreSQL, migrations and the one-time admin password had been printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path

import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from tests.support.cli_process import EmmaProcess, run_emma


def _env(state: Path) -> dict[str, str]:
    return {
        "EMMA_STATE_DIR": str(state),
        "EMMA_GRPC_PORT": "0",
        "EMMA_GATEWAY_PORT": "0",
        "DATABASE_URL": "",
        "EMMA_ADMIN_PASSWORD": "",
    }


def _login(port: int, password: str) -> identity_pb2.LoginResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return identity_pb2_grpc.IdentityServiceStub(ch).Login(
            identity_pb2.LoginRequest(email="admin@emma.local", password=password), timeout=10
        )


def test_a_second_emma_up_on_the_same_state_folder_is_refused_and_the_first_keeps_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = EmmaProcess("up", env=_env(state))
    try:
        port = int(first.wait_for("gRPC services on 127.0.0.1:", timeout=120).rsplit(":", 1)[1])
        first.wait_for("ready; press Ctrl-C to stop", timeout=120)

        mode = stat.S_IMODE(os.stat(state).st_mode)
        second = run_emma("up", env=_env(state), timeout=60)
        assert second.returncode != 0
        # The refused start leaves the folder as the running stack set it (as root, its PostgreSQL runs
        # as another user that must pass through it; narrowing it would break the stack's stop).
        assert stat.S_IMODE(os.stat(state).st_mode) == mode
        output = second.stdout + second.stderr
        assert f"in use by a running emma up (pid {first.proc.pid}," in output, output
        assert "--state-dir" in output
        assert "embedded PostgreSQL" not in output  # refused before touching the database

        # The first stack still answers, with its database and its sessions intact.
        password = json.loads((state / "secrets.json").read_text())["demo_admin_password"]
        assert _login(port, password).access_token
    finally:
        assert first.stop(signal.SIGINT) == 0, "\n".join(first.lines)


def test_a_taken_gateway_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_emma("up", "--gateway-port", str(port), env=_env(state), timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"the REST gateway's port 127.0.0.1:{port} is in use" in output, output
    assert "--gateway-port" in output
    assert "PostgreSQL" not in output and "password" not in output
    assert not (state / "pgdata").exists()


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command's closing parenthesis: state, parent's pid, …"""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` now (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(_stat(entry.name)[1]) == pid:
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def _started_at(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/PID/stat's field 22)."""
    return int(_stat(pid)[19])


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


def test_the_lock_goes_with_its_process(tmp_path: Path) -> None:
    """kill -9 leaves the lock file behind, but not the lock: the next emma up starts. What the killed
    one started goes with it (its edge daemons, REST gateway and forecast model process), except its
    PostgreSQL: the next emma up attaches to that one and, on Ctrl-C, stops it as its own."""
    state = tmp_path / "state"
    first = EmmaProcess("up", env=_env(state))
    try:
        first.wait_for("ready; press Ctrl-C to stop", timeout=180)
        assert (state / "pgdata" / "postmaster.pid").exists()
        started = _children(first.proc.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started]
        assert sum(" edge --config " in c for c in commands) == 2 and any(" gateway " in c for c in commands), commands
        (model,) = [pid for pid, c in zip(started, commands, strict=True) if "spawn_main" in c]  # the models'
        # It starts before PostgreSQL, so its imports are not inside the demo sites' first forecasts.
        postgres = int((state / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert _started_at(model) <= _started_at(postgres)
    finally:
        first.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(started), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _alive(started)]
    assert (state / "emma-up.lock").exists()
    again = EmmaProcess("up", env=_env(state))
    try:
        again.wait_for("ready; press Ctrl-C to stop", timeout=180)
    finally:
        assert again.stop(signal.SIGINT) == 0, "\n".join(again.lines)
    assert not (state / "pgdata" / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"
