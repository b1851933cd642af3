"""schemathesis against /openapi.json, in-process over ASGI, with a logged-in user.

Every operation gets generated requests, valid and invalid; the properties checked are the gateway's
promises: no 5xx, every answer of the Content-Type and schema the document says (errors included:
the document's default response is the AIP-193 Error), and every error body AIP-193 JSON with an
ErrorInfo. The services run in a thread of their own, because schemathesis drives the ASGI app
synchronously from its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.support.gateway import create_user, hosted, login

MAX_EXAMPLES = 20
# Operations that would end the test user's session (the run keeps one login).
SESSION_ENDING = ("IdentityService_Logout", "IdentityService_RevokeSession")


class ServicesThread:
    """The cloud services on loopback, in a thread with its own event loop."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0
        self.token: str | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-services", daemon=True)

    def __enter__(self) -> ServicesThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert self.port, "the services did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await create_user(self._dsn, "acme")
        async with hosted(self._dsn) as (port, _):
            self.token = await login(GatewayConfig(target=f"127.0.0.1:{port}"))
            self.port = port
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def services(migrated_url: str) -> Iterator[ServicesThread]:
    with ServicesThread(migrated_url) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(services: ServicesThread) -> Any:
    config = GatewayConfig(target=f"127.0.0.1:{services.port}", write_rate_per_s=0.0, stream_deadline_s=2.0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config))
    for operation_id in SESSION_ENDING:
        schema = schema.exclude(operation_id=operation_id)
    return schema


@pytest.fixture(scope="module")
def auth_headers(services: ServicesThread) -> dict[str, str]:
    return {"authorization": f"Bearer {services.token}"}


def aip_193_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is {"error": {code, status, message, details}} with one ErrorInfo."""
    if response.status_code < 400:
        return None
    body = response.json()
    error = body["error"]
    assert set(body) == {"error"} and set(error) == {"code", "status", "message", "details"}, body
    assert error["code"] == response.status_code, body
    infos = [d for d in error["details"] if d.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert len(infos) == 1 and infos[0]["reason"], body
    return True


def test_every_operation(api_schema: Any, auth_headers: dict[str, str]) -> None:
    # One hypothesis run per operation, positive and negative cases mixed, failures collected so one
    # broken operation does not hide the others. (schemathesis' own pytest plugin does not support
    # fixtures under this pytest yet.)
    checks = [not_a_server_error, content_type_conformance, response_schema_conformance, aip_193_errors]
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 50
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.generate],
        )
        def run(case: Any) -> None:
            response = case.call(headers=auth_headers)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks)

        try:
            try:
                run()
            except Flaky as flaky:
                # The failing example did not fail again when replayed: the machine, not the input, is
                # suspect (seen once on a loaded CI run). Run the operation once more; only a failure
                # that comes back counts, and the first one is printed either way.
                print(f"schemathesis: {operation.label}: not reproducible, retried: {flaky!r}"[:2000])
                run()
        except Exception as exc:
            # A flaky (non-reproducing) failure wraps the first run's error: show that one too.
            inner = "".join(f"\n  caused by: {e!r}"[:2000] for e in getattr(exc, "exceptions", ()))
            failures[operation.label] = (str(exc) + inner)[:4000]
    print(f"schemathesis: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    # The run must have exercised both sides: accepted requests and refused ones.
    assert statuses[200] > 0 and sum(n for code, n in statuses.items() if 400 <= code < 500) > 0, statuses
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
