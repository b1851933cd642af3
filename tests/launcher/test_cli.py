"""The `emma` command as a person uses it: help everywhere, one-line errors, `emma up` start and stop."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import time
from pathlib import Path

import grpc
import psutil
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.cli import build_parser
from tests.support.cli_process import EmmaProcess, run_emma
from tests.support.pg import SessionPostgres


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _subcommand_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", _subcommand_paths(build_parser()), ids=lambda p: " ".join(p) or "emma")
def test_every_subcommand_has_help(path: tuple[str, ...]) -> None:
    result = run_emma(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: emma")


def test_every_documented_command_exists() -> None:
    names = {p[0] for p in _subcommand_paths(build_parser()) if p}
    assert {"up", "serve", "gateway", "edge", "migrate", "admin"} <= names


def _one_line_error(result: object, code: int, needle: str) -> None:
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.returncode == code, stderr  # type: ignore[attr-defined]
    assert len(stderr.splitlines()) == 1, stderr
    assert needle in stderr


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    _one_line_error(run_emma("migrate", "--bogus"), 2, "unrecognized arguments: --bogus")
    _one_line_error(run_emma("serve", "nosuch", "--port", "x"), 2, "invalid int value: 'x'")


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("--bogus",), "--bogus"), (("--bogus=1", "up"), "--bogus=1"), (("edge", "--bogus"), "--bogus")],
)
def test_an_unknown_flag_is_named_even_when_something_required_is_missing(args: tuple[str, ...], flag: str) -> None:
    _one_line_error(run_emma(*args), 2, f"unrecognized arguments: {flag}")


def test_an_unknown_service_is_one_line() -> None:
    result = run_emma("serve", "nosuch", env={"DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    _one_line_error(result, 1, "unknown service nosuch")


def test_an_unreachable_database_is_one_line() -> None:
    result = run_emma("migrate", env={"DATABASE_URL": "postgresql://emma:secret@127.0.0.1:1/emma"})
    _one_line_error(result, 1, "cannot connect to PostgreSQL at postgresql://emma:***@127.0.0.1:1/emma")
    assert "secret" not in result.stderr


def test_a_port_in_use_is_one_line(migrated_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_emma("serve", "all", "--port", str(port), env={"DATABASE_URL": migrated_url})
    _one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")


async def test_a_failing_migration_is_one_line_and_applies_nothing(postgres: SessionPostgres, tmp_path: Path) -> None:
    database_url = await postgres.create_database("cli_failing_migration")
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE first_table (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE second_table (id int); SELEC 1;")
    env = {"DATABASE_URL": database_url, "EMMA_MIGRATIONS_DIR": str(tmp_path)}
    result = run_emma("migrate", env=env)
    _one_line_error(result, 1, "migration 0002_broken failed and was rolled back: syntax error")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE second_table (id int);")
    fixed = run_emma("migrate", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert "applied 1 migration(s): 0002_broken" in fixed.stdout


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


def _login(port: int, password: str) -> str:
    """The demo admin's access token: a call that needs the database."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = identity_pb2_grpc.IdentityServiceStub(channel).Login(
            identity_pb2.LoginRequest(email="admin@emma.local", password=password), timeout=10
        )
        return str(reply.access_token)


def _login_once_the_database_is_back(port: int, password: str, timeout: float = 60) -> str:
    """Logs in, retrying only what says "retry" (UNAVAILABLE) until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _login(port, password)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_emma_up_serves_stops_on_ctrl_c_and_reuses_its_data(tmp_path: Path) -> None:
    env = {
        "EMMA_STATE_DIR": str(tmp_path / "state"),
        "EMMA_GRPC_PORT": "0",
        "EMMA_GATEWAY_PORT": "0",
        "DATABASE_URL": "",
    }
    for run in (1, 2):
        proc = EmmaProcess("up", env=env)
        try:
            line = proc.wait_for("gRPC services on 127.0.0.1:", timeout=120)
            port = int(line.rsplit(":", 1)[1])
            proc.wait_for("ready; press Ctrl-C to stop")
            assert _health(port) == health_pb2.HealthCheckResponse.SERVING
            applied = proc.wait_for("migrations:")
            assert ("applied now" in applied) and (run == 1) == (" 0 applied now" not in applied)
            if run == 2:
                # Its embedded PostgreSQL killed under it: emma up starts it again and everything
                # reconnects (launcher/pg_watch.py), instead of answering DATABASE_UNAVAILABLE until Ctrl-C.
                password = json.loads((tmp_path / "state" / "secrets.json").read_text())["demo_admin_password"]
                assert _login(port, password)
                pgdata = tmp_path / "state" / "pgdata"
                os.kill(int((pgdata / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
                proc.wait_for("emma up: the embedded PostgreSQL stopped unexpectedly; starting it again", timeout=30)
                proc.wait_for("emma up: the embedded PostgreSQL runs again", timeout=90)
                assert _login_once_the_database_is_back(port, password)
                # An edge daemon killed under it is started again, as a service manager would.
                first = proc.wait_for("  edge daemon pid ")
                edge_pid = int(first.split("pid ", 1)[1].split(":", 1)[0])
                os.kill(edge_pid, signal.SIGKILL)
                proc.wait_for("stopped (exit code -9); starting it again", timeout=30)
                again = proc.wait_for("(started again)", timeout=30)
                new_pid = int(again.split("pid ", 1)[1].split(":", 1)[0])
                assert new_pid != edge_pid and psutil.Process(new_pid).is_running()
                assert first.split(": ", 1)[1].split(" (log:")[0] == again.split(": ", 1)[1].split(" (started")[0]
        finally:
            code = proc.stop(signal.SIGINT)
        assert code == 0, "\n".join(proc.lines)
        assert "emma up: stopped" in proc.lines
        assert (tmp_path / "state" / "pgdata" / "PG_VERSION").exists()


def test_emma_edge_simulate_says_it_is_offline_and_keeps_its_own_data_folder(tmp_path: Path) -> None:
    proc = EmmaProcess("edge", "--simulate", cwd=tmp_path)
    try:
        line = proc.wait_for("running OFFLINE", timeout=60)
        outbox = tmp_path / ".emma" / "edge-sim" / "outbox.sqlite"
        assert str(Path(".emma") / "edge-sim" / "outbox.sqlite") in line
        deadline = time.monotonic() + 60
        while not outbox.exists():
            assert time.monotonic() < deadline, "\n".join(proc.lines)
            time.sleep(0.2)
    finally:
        assert proc.stop(signal.SIGINT) == 0, "\n".join(proc.lines)
    # `emma up`'s demo edge keeps its key, site file and outbox in edge-demo; the simulation stays out.
    assert not (tmp_path / ".emma" / "edge-demo").exists()
