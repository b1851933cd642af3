"""`emma serve --workers N`: N processes serve one port (SO_REUSEPORT), each a full replica; the first
starts the others and they stop with it, on SIGTERM or when it is killed."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import grpc
import psutil
import pytest
from emma.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from tests.support.cli_process import EmmaProcess


def _env(dsn: str, state: Path) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "EMMA_STATE_DIR": str(state), "EMMA_SHUTDOWN_GRACE_S": "0.5"}


async def _serve_with_two_workers(dsn: str, state: Path) -> tuple[EmmaProcess, int, psutil.Process]:
    proc = EmmaProcess("serve", "telemetry", "identity", "--port", "0", "--workers", "2", env=_env(dsn, state))
    line = await asyncio.to_thread(proc.wait_for, "emma serve: telemetry, identity on", 90)
    children = psutil.Process(proc.proc.pid).children()
    assert len(children) == 1, children
    # The port right after the address: in one CI run another process's log line followed the
    # announcement on the same line of the shared pipe.
    found = re.search(r"emma serve: telemetry, identity on [0-9.]+:(\d+)", line)
    assert found, line
    return proc, int(found.group(1)), children[0]


def _listens(pid: int, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in psutil.Process(pid).net_connections("tcp")
    )


def _nobody_listens(port: int) -> bool:
    # Not "can this port be bound": once the workers are gone the kernel may hand the port out again
    # as another test's outgoing connection's local port (one CI run failed so), which is no listener.
    return not any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in psutil.net_connections("tcp"))


async def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_two_workers_serve_one_port_and_stop_together_on_sigterm(
    migrated_url: str, token: str, tmp_path: Path
) -> None:
    proc, port, worker = await _serve_with_two_workers(migrated_url, tmp_path)
    try:
        assert _listens(proc.proc.pid, port) and _listens(worker.pid, port)
        # Connections of their own (no shared subchannel), so the kernel spreads them over both.
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(8)
        ]
        try:
            request = telemetry_pb2.ListLatestValuesRequest(parent="organizations/acme/sites/nope")
            for channel in channels:
                stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as answer:  # a real answer from either worker
                    await stub.ListLatestValues(request, metadata=[("authorization", f"Bearer {token}")])
                assert answer.value.code() == grpc.StatusCode.NOT_FOUND, answer.value
        finally:
            for channel in channels:
                await channel.close()
    finally:
        code = proc.stop(signal.SIGTERM)
    assert code == 0, "\n".join(proc.lines)
    assert await _gone(worker.pid, 10)
    assert _nobody_listens(port)


async def test_a_worker_stops_when_the_first_is_killed(migrated_url: str, tmp_path: Path) -> None:
    proc, port, worker = await _serve_with_two_workers(migrated_url, tmp_path)
    try:
        proc.proc.kill()  # no chance to stop its workers
        assert await _gone(worker.pid, 10), "the worker outlived the first process"
        assert _nobody_listens(port)
    finally:
        if psutil.pid_exists(worker.pid):
            worker.kill()
        proc.stop(signal.SIGKILL)
