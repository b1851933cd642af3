"""The background-worker hook: a service's workers run wherever it is hosted (services.cloud.hosted_services,
which `emma serve` and `emma up` both use), start once the server listens and stop before the pool closes."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field

import pytest

from services import catalog
from services.cloud import hosted_services
from services.errors import StartupError
from services.platform.config import ServerConfig
from services.platform.registration import Worker, WorkerFactory, build_workers
from services.platform.runtime import Runtime
from tests.support.cloud import platform_config
from tests.support.uplink import closed_port


@dataclass
class Journal:
    events: list[str] = field(default_factory=list)


@dataclass
class ProbeWorker:
    """A worker that notes whether the server listened when it started and the pool answered when it stopped."""

    runtime: Runtime
    port: int
    journal: Journal
    name: str = "probe"
    fail_start: bool = False

    async def start(self) -> None:
        with socket.socket() as s:
            listening = s.connect_ex(("127.0.0.1", self.port)) == 0
        self.journal.events.append(f"{self.name} start, server listening: {listening}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        answer = await self.runtime.pool.fetchval("SELECT 41 + 1")
        self.journal.events.append(f"{self.name} stop, pool answered {answer}")


def _factory(journal: Journal, port: int, name: str = "probe", fail_start: bool = False) -> WorkerFactory:
    def make(runtime: Runtime) -> Worker:
        journal.events.append(f"{name} built")
        return ProbeWorker(runtime, port, journal, name, fail_start)

    return make


def _with_workers(monkeypatch: pytest.MonkeyPatch, *factories: WorkerFactory) -> None:
    spec = catalog.SERVICES["market"]
    monkeypatch.setitem(catalog.SERVICES, "market", dataclasses.replace(spec, workers=factories))


async def test_a_services_workers_start_after_the_server_listens_and_stop_before_the_pool_closes(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal()
    port = closed_port()
    _with_workers(monkeypatch, _factory(journal, port))
    config = dataclasses.replace(platform_config(migrated_url), server=ServerConfig(port=port, shutdown_grace_s=0.2))
    async with hosted_services(["market"], config) as (hosted, runtime):
        assert hosted.port == port
        assert journal.events == ["probe built", "probe start, server listening: True"]
    assert journal.events[-1] == "probe stop, pool answered 42"
    assert runtime.pool.is_closing()


async def test_on_a_busy_port_no_worker_starts(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _with_workers(monkeypatch, _factory(journal, port))
        config = dataclasses.replace(platform_config(migrated_url), server=ServerConfig(port=port))
        with pytest.raises(StartupError, match="already in use"):
            async with hosted_services(["market"], config):
                pass
    assert journal.events == ["probe built"]


async def test_a_worker_that_cannot_start_stops_the_others_and_the_server(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal()
    port = closed_port()
    _with_workers(monkeypatch, _factory(journal, port, "first"), _factory(journal, port, "second", fail_start=True))
    config = dataclasses.replace(platform_config(migrated_url), server=ServerConfig(port=port, shutdown_grace_s=0.2))
    with pytest.raises(RuntimeError, match="second cannot start"):
        async with hosted_services(["market"], config):
            pytest.fail("the block must not run when a worker cannot start")
    assert journal.events == [
        "first built",
        "second built",
        "first start, server listening: True",
        "second start, server listening: True",
        "first stop, pool answered 42",
    ]
    with socket.socket() as s:  # the server let go of its port
        s.bind(("127.0.0.1", port))


def test_a_worker_named_by_two_hosted_services_is_built_once() -> None:
    journal = Journal()
    shared = _factory(journal, 0)
    spec = dataclasses.replace(catalog.SERVICES["market"], workers=(shared,))
    other = dataclasses.replace(catalog.SERVICES["telemetry"], workers=(shared,))
    workers = build_workers([spec, other], Runtime(config=platform_config(""), pool=None))  # type: ignore[arg-type]
    assert len(workers) == 1 and journal.events == ["probe built"]
