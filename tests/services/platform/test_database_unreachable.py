"""Calls made while the database cannot be reached answer UNAVAILABLE with DATABASE_UNAVAILABLE (retry
with backoff), as the contract says, instead of INTERNAL; once the database is back they work again.
Background loops log such a pass in one line, anything else with its traceback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from grpc_status import rpc_status

from gateway.app import create_app
from gateway.config import GatewayConfig
from services.cloud import hosted_services
from services.errors import error_info_of
from services.platform.db import database_unreachable, log_failed_pass
from tests.support.cloud import platform_config
from tests.support.db_proxy import DatabaseProxy
from tests.support.gateway import error_of, reason_of
from tests.support.identity import authed_channel, grant

ACME = "organizations/acme"


async def _status(call: Any) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_info_of(status) if status is not None else None
    metadata = dict(info.metadata) if info is not None else {}
    return caught.value.code(), info.reason if info is not None else "", caught.value.details() or "", metadata


async def test_calls_answer_unavailable_while_the_database_is_unreachable_and_work_once_it_is_back(
    db: asyncpg.Connection, migrated_url: str
) -> None:
    admin = await grant(db, "acme", "admin")
    async with (
        DatabaseProxy(migrated_url) as proxy,
        hosted_services(["registry", "identity"], platform_config(proxy.dsn)) as (server, _),
        authed_channel(server.port, admin.token) as channel,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.ListSitesRequest(parent=ACME)
        await registry.ListSites(request)

        await proxy.cut()
        # Every call now: the pool's connections were reset under it, and new ones are refused.
        for _ in range(3):
            code, reason, message, metadata = await _status(registry.ListSites(request))
            assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"), message
            assert message == "the database cannot be reached; retry with backoff"
            assert metadata == {"retry_after_ms": "2000"}  # when to try first
        # Through the REST gateway: 503, and the same wait as Retry-After.
        app = create_app(GatewayConfig(target=f"127.0.0.1:{server.port}"))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as rest:
                answer = await rest.get(
                    "/v1/organizations/acme/sites", headers={"authorization": f"Bearer {admin.token}"}
                )
        finally:
            await app.state.gateway.close()
        assert (answer.status_code, answer.headers.get("retry-after")) == (503, "2"), answer.text
        assert reason_of(error_of(answer)) == "DATABASE_UNAVAILABLE"

        await proxy.restore()
        codes: set[grpc.StatusCode] = set()
        async with asyncio.timeout(30):
            while True:
                try:
                    await registry.ListSites(request)
                    break
                except grpc.aio.AioRpcError as exc:
                    codes.add(exc.code())
                    await asyncio.sleep(0.1)
        assert codes <= {grpc.StatusCode.UNAVAILABLE}, codes  # until it was back, nothing but "retry"


@pytest.mark.parametrize(
    ("exc", "unreachable"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),  # TCP: no server at the address
        (FileNotFoundError(2, "No such file or directory"), True),  # its Unix socket gone in a restart
        (asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (FileNotFoundError(2, "No such file or directory", "/etc/emma.toml"), False),  # a file, named
        (asyncpg.exceptions.PostgresSyntaxError("syntax error at or near"), False),  # a bug
        (asyncpg.exceptions.UniqueViolationError("duplicate key value"), False),
        (ValueError("bad row"), False),
    ],
)
def test_what_counts_as_the_database_unreachable(exc: BaseException, unreachable: bool) -> None:
    assert database_unreachable(exc) is unreachable


def test_a_failed_background_pass_is_one_line_while_the_database_is_unreachable_else_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("emma.test.pass")
    with caplog.at_level(logging.WARNING, logger="emma.test.pass"):
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            log_failed_pass(log, "alarm evaluation failed", logging.ERROR)
        try:
            raise ValueError("bad row")
        except ValueError:
            log_failed_pass(log, "alarm evaluation failed", logging.ERROR)
    outage, bug = caplog.records
    assert (outage.levelno, outage.exc_info) == (logging.WARNING, None)
    assert outage.getMessage() == (
        "alarm evaluation failed: the database cannot be reached ([Errno 111] Connection refused); retrying"
    )
    assert bug.levelno == logging.ERROR and bug.exc_info is not None and bug.exc_info[0] is ValueError
    assert bug.getMessage() == "alarm evaluation failed; retrying"
