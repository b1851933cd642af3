"""How a domain offers its gRPC services to the process that hosts it.

Each domain's package face exports `SERVICES`, a tuple of ServiceSpec; services/catalog.py lists the
domains, so a new domain is one line there (docs/contributing.md).

A spec may also name background workers (a fetch scheduler, a forecaster): whatever hosts the service
(`emma serve`, `emma up`, both through services.cloud.hosted_services) builds them once its servicers
are added, starts them once the server listens, and stops them on shutdown, after the server drained
and before the database pool closes. So a worker runs wherever its service runs, by one code path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor as pb_descriptor

from services.platform.runtime import Runtime

log = logging.getLogger("emma.platform")

ServicerFactory = Callable[[Runtime], Any]


class Worker(Protocol):
    """Background work of a domain, started and stopped by the process that hosts its service."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Builds a worker from the process's runtime; it reads its own settings (an on/off switch too) from
# runtime.config.env, so a worker that is switched off is one whose start() does nothing.
WorkerFactory = Callable[[Runtime], Worker]


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of the contract and, once implemented, the factory of its servicer."""

    key: str  # the short name `emma serve <key>` takes
    descriptor: pb_descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    factory: ServicerFactory | None
    workers: tuple[WorkerFactory, ...] = ()

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


def service_spec(
    key: str,
    file: Any,
    service: str,
    add: Callable[[Any, grpc.aio.Server], None],
    factory: ServicerFactory | None = None,
    workers: tuple[WorkerFactory, ...] = (),
) -> ServiceSpec:
    """A ServiceSpec from a generated *_pb2 module and the service's name in it."""
    return ServiceSpec(key, file.DESCRIPTOR.services_by_name[service], add, factory, workers)


def build_workers(specs: Iterable[ServiceSpec], runtime: Runtime) -> list[Worker]:
    """One worker per factory named by `specs` (a factory two hosted services share runs once)."""
    factories = dict.fromkeys(factory for spec in specs for factory in spec.workers)
    workers = [factory(runtime) for factory in factories]
    # First in the list, so it stops last: the runtime's closers (servicers' shared clients) run once
    # every other worker, which may still use them, has stopped.
    return [_RuntimeClosers(runtime), *workers] if runtime.closers else workers


class _RuntimeClosers:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._runtime.close()


@contextlib.asynccontextmanager
async def running_workers(workers: list[Worker]) -> AsyncIterator[None]:
    """Start `workers` in order; on exit (or when one fails to start) stop those started, last first.

    A worker whose stop fails is logged and the others are still stopped: shutdown must reach the pool."""
    started: list[Worker] = []
    try:
        for worker in workers:
            await worker.start()
            started.append(worker)
        yield
    finally:
        for worker in reversed(started):
            try:
                await worker.stop()
            except Exception:
                log.warning(
                    "a background worker failed to stop", extra={"worker": type(worker).__name__}, exc_info=True
                )
