"""The service platform: migrations, the server's health/reflection/errors/tracing, graceful drain."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from pathlib import Path

import asyncpg
import grpc
import pytest
from emma.common.v1 import errors_pb2
from emma.registry.v1 import registry_pb2, registry_pb2_grpc
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import tracing
from core.tracing import configure_tracing
from services import catalog
from services.errors import ApiError, ConfigError, error_info_of, invalid_field
from services.platform import migrations
from services.platform.config import DatabaseConfig, PlatformConfig, ServerConfig, StateConfig
from services.platform.runtime import Runtime
from services.platform.secrets import local_secret
from services.platform.server import HostedServer, create_server, start_server
from tests.support.pg import SessionPostgres

# --------------------------------------------------------------------------- migrations


async def test_migrations_apply_in_order_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = await migrations.migrate(conn)
        assert first == [m.name for m in migrations.load_migrations()]
        assert await migrations.migrate(conn) == []
        versions = await migrations.applied_versions(conn)
        assert versions == sorted(versions) and len(versions) == len(first)
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        assert {"identity", "app", "telemetry"} <= schemas
    finally:
        await conn.close()


def _write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


async def test_concurrent_migrators_apply_each_migration_once(postgres: SessionPostgres, tmp_path: Path) -> None:
    dsn = await postgres.create_database("concurrent_migrate")
    folder = tmp_path / "m"
    _write(folder, "0001_a.sql", "CREATE TABLE a (id int); SELECT pg_sleep(0.3);")
    _write(folder, "0002_b.sql", "INSERT INTO a VALUES (1);")
    loaded = migrations.load_migrations(folder)
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c, loaded) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM a") == 1
    finally:
        for c in conns:
            await c.close()
        await postgres.drop_database(dsn)


async def test_a_failing_migration_is_rolled_back_whole(postgres: SessionPostgres, tmp_path: Path) -> None:
    dsn = await postgres.create_database("failing_migrate")
    folder = tmp_path / "m"
    _write(folder, "0001_good.sql", "CREATE TABLE good (id int);")
    _write(folder, "0002_bad.sql", "CREATE TABLE half (id int);\nSELECT * FROM no_such_table;")
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(migrations.MigrationError, match=r"0002_bad failed and was rolled back: .*no_such_table"):
            await migrations.migrate(conn, migrations.load_migrations(folder))
        assert await migrations.applied_versions(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT to_regclass('good')") is not None
        # The lock was released: a fixed file applies.
        _write(folder, "0002_bad.sql", "CREATE TABLE half (id int);")
        assert await migrations.migrate(conn, migrations.load_migrations(folder)) == ["0002_bad"]
        # Editing an applied migration is refused.
        _write(folder, "0001_good.sql", "CREATE TABLE good (id bigint);")
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn, migrations.load_migrations(folder))
    finally:
        await conn.close()
        await postgres.drop_database(dsn)


async def test_a_migration_numbered_below_the_newest_applied_one_is_applied(
    postgres: SessionPostgres, tmp_path: Path
) -> None:
    # A branch's migration that lands after a later-numbered one was applied (a development database
    # that ran main's newer migration first): every version missing from the ledger is applied, not only
    # the numbers above the newest.
    dsn = await postgres.create_database("gap_migrate")
    folder = tmp_path / "m"
    _write(folder, "0001_a.sql", "CREATE TABLE a (id int);")
    _write(folder, "0003_c.sql", "CREATE TABLE c (id int);")
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrations.migrate(conn, migrations.load_migrations(folder)) == ["0001_a", "0003_c"]
        _write(folder, "0002_b.sql", "CREATE TABLE b (id int);")
        assert await migrations.migrate(conn, migrations.load_migrations(folder)) == ["0002_b"]
        assert await migrations.applied_versions(conn) == [1, 2, 3]
        assert await conn.fetchval("SELECT to_regclass('b')") is not None
    finally:
        await conn.close()
        await postgres.drop_database(dsn)


async def test_a_comment_may_change_but_a_statement_may_not(postgres: SessionPostgres, tmp_path: Path) -> None:
    dsn = await postgres.create_database("comment_migrate")
    folder = tmp_path / "m"
    _write(folder, "0001_good.sql", "-- Why this table exists.\nCREATE TABLE good (id int);")
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrations.migrate(conn, migrations.load_migrations(folder)) == ["0001_good"]
        _write(folder, "0001_good.sql", "-- Why this table exists, said better.\nCREATE TABLE good (id int);")
        assert await migrations.migrate(conn, migrations.load_migrations(folder)) == []
        _write(folder, "0001_good.sql", "-- Why this table exists, said better.\nCREATE TABLE good (id bigint);")
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn, migrations.load_migrations(folder))
    finally:
        await conn.close()
        await postgres.drop_database(dsn)


async def test_a_ledger_of_whole_file_checksums_is_taken_over(migrated_url: str) -> None:
    """Databases migrated before comments were left out of checksums hold whole-file checksums of the
    files as released; they start as before and their ledger gets the statements-only checksums."""
    conn = await asyncpg.connect(migrated_url)
    try:
        released = migrations._WHOLE_FILE_CHECKSUMS
        for version, checksum in released.items():
            await conn.execute(
                "UPDATE public.schema_migrations SET checksum = $2 WHERE version = $1", version, checksum
            )
        assert await migrations.migrate(conn) == []
        stored = dict(await conn.fetch("SELECT version, checksum FROM public.schema_migrations"))
        assert stored == {m.version: m.checksum for m in migrations.load_migrations()}
        assert all(stored[v] != released[v] for v in released)
    finally:
        await conn.close()


async def test_the_telemetry_store_is_partitioned_where_timescaledb_cannot_be_created(
    postgres: SessionPostgres,
) -> None:
    """The embedded PostgreSQL has no timescaledb: 'auto' keeps the plain path, 'timescaledb' fails clearly."""
    dsn = await postgres.create_database("telemetry_store_choice")
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(
            migrations.MigrationError,
            match=r"0006_telemetry_timescaledb failed and was rolled back: "
            r"EMMA_TELEMETRY_STORE=timescaledb, but the extension cannot be created",
        ):
            await migrations.migrate(conn, settings={"telemetry_store": "timescaledb"})
        assert await migrations.applied_versions(conn) == [1, 2, 3, 4, 5]
        # 0006 first; later domains' migrations follow it.
        assert (await migrations.migrate(conn, settings={"telemetry_store": "auto"}))[0] == "0006_telemetry_timescaledb"
        assert await conn.fetchval("SELECT mode FROM telemetry.storage_info") == "partitioned"
    finally:
        await conn.close()
        await postgres.drop_database(dsn)


def test_the_telemetry_store_setting_is_checked() -> None:
    assert DatabaseConfig.from_env({}).migration_settings == {"telemetry_store": "auto"}
    assert DatabaseConfig.from_env({"EMMA_TELEMETRY_STORE": "timescaledb"}).telemetry_store == "timescaledb"
    with pytest.raises(ConfigError, match="EMMA_TELEMETRY_STORE='hypertable' is not one of auto, partitioned"):
        DatabaseConfig.from_env({"EMMA_TELEMETRY_STORE": "hypertable"})


def test_misnamed_migration_files_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "1_x.sql", "SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"1_x\.sql is not named NNNN_description\.sql"):
        migrations.load_migrations(tmp_path)


# --------------------------------------------------------------------------- config and secrets


def test_config_reads_typed_values_and_names_bad_variables() -> None:
    cfg = PlatformConfig.from_env({"EMMA_GRPC_PORT": "6000", "DATABASE_URL": "postgresql://h/db"})
    assert cfg.server.port == 6000 and cfg.database.url == "postgresql://h/db"
    with pytest.raises(ConfigError, match="EMMA_GRPC_PORT='abc' is not an integer"):
        ServerConfig.from_env({"EMMA_GRPC_PORT": "abc"})
    with pytest.raises(ConfigError, match="EMMA_GRPC_PORT=70000 is not a TCP port"):
        ServerConfig.from_env({"EMMA_GRPC_PORT": "70000"})
    assert DatabaseConfig.from_env({}).url is None


def test_local_secrets_are_generated_once_into_a_0600_file(tmp_path: Path) -> None:
    first = local_secret(tmp_path, "jwt_signing_key")
    again = local_secret(tmp_path, "jwt_signing_key")
    other = local_secret(tmp_path, "other")
    assert first == again and first != other and len(first) >= 40
    mode = stat.S_IMODE(os.stat(tmp_path / "secrets.json").st_mode)
    assert mode == 0o600


# --------------------------------------------------------------------------- server


class _Registry(registry_pb2_grpc.RegistryServiceServicer):
    """A test servicer: one method fails the way handlers do, one crashes, one is slow."""

    def __init__(self) -> None:
        self.slow_started = asyncio.Event()

    async def GetSite(
        self, request: registry_pb2.GetSiteRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Site:  # type: ignore[type-arg]
        if request.name == "crash":
            raise RuntimeError("secret internal detail")
        if request.name == "slow":
            self.slow_started.set()
            await asyncio.sleep(0.5)
            return registry_pb2.Site(name="slow")
        if not request.name.startswith("organizations/"):
            raise invalid_field("name", "must be organizations/{organization}/sites/{site}")
        raise ApiError(
            grpc.StatusCode.NOT_FOUND,
            errors_pb2.ERROR_REASON_RESOURCE_NOT_FOUND,
            "no such site",
            metadata={"resource": request.name},
        )


async def _start(servicer: object | None = None) -> tuple[HostedServer, grpc.aio.Channel]:
    cfg = ServerConfig(port=0)
    server = create_server(cfg)
    names: list[str] = []
    if servicer is not None:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        names.append("emma.registry.v1.RegistryService")
    hosted = await start_server(server, cfg, names)
    return hosted, grpc.aio.insecure_channel(f"127.0.0.1:{hosted.port}")


async def test_api_errors_carry_error_info_and_bad_request() -> None:
    hosted, channel = await _start(_Registry())
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSite(registry_pb2.GetSiteRequest(name="organizations/o/sites/x"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_info_of(status)
        assert info is not None and info.reason == "RESOURCE_NOT_FOUND" and info.domain == "emma.energy"
        assert dict(info.metadata) == {"resource": "organizations/o/sites/x"}

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.GetSite(registry_pb2.GetSiteRequest(name="nope"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_status = rpc_status.from_call(bad.value)  # type: ignore[arg-type]
        assert bad_status is not None
        request_errors = [x for x in bad_status.details if x.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
        assert len(request_errors) == 1
        br = error_details_pb2.BadRequest()
        request_errors[0].Unpack(br)
        assert br.field_violations[0].field == "name"

        with pytest.raises(grpc.aio.AioRpcError) as crash:
            await stub.GetSite(registry_pb2.GetSiteRequest(name="crash"))
        assert crash.value.code() == grpc.StatusCode.INTERNAL
        assert "secret internal detail" not in (crash.value.details() or "")
    finally:
        await channel.close()
        await hosted.drain(0)


async def test_every_method_is_served_through_the_one_generic_request() -> None:
    """grpc.aio waits, per arriving call, on one pending request per registered method; the server
    registers none, so one request for any method is pending, and the generic handlers serve them."""
    hosted, channel = await _start(_Registry())
    try:
        pending = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
        assert pending.count("AioServer._request_call") == 1
        assert "AioServer._request_registered_call" not in pending
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        assert (await stub.GetSite(registry_pb2.GetSiteRequest(name="slow"))).name == "slow"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await hosted.drain(0)


async def test_health_reflection_and_unimplemented_services(migrated_url: str) -> None:
    cfg = ServerConfig(port=0)
    server = create_server(cfg)
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    runtime = Runtime(config=PlatformConfig(cfg, DatabaseConfig(url=migrated_url), StateConfig()), pool=pool)
    # Every service is implemented now: serve the registry through its UNIMPLEMENTED stand-in.
    specs = [dataclasses.replace(s, factory=None) if s.key == "registry" else s for s in catalog.resolve(["all"])]
    catalog.add_services(server, specs, runtime)
    names = [s.full_name for s in specs]
    hosted = await start_server(server, cfg, names)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{hosted.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for name in [*names, ""]:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        assert {s.name for s in listed.list_services_response.service} >= set(names)
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="emma.command.v1.Command"))
        files = await call.read()
        protos = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in files.file_descriptor_response.file_descriptor_proto
        ]
        assert "emma/command/v1/command.proto" in {p.name for p in protos}
        await call.done_writing()

        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSite(registry_pb2.GetSiteRequest(name="organizations/o/sites/s"))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "RegistryService/GetSite is part of the v1 contract" in (caught.value.details() or "")
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_info_of(status)
        assert info is not None and info.reason == "METHOD_NOT_IMPLEMENTED"
    finally:
        await channel.close()
        await hosted.drain(0)
        await pool.close()


async def test_drain_reports_not_serving_and_finishes_in_flight_calls() -> None:
    servicer = _Registry()
    hosted, channel = await _start(servicer)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        in_flight = asyncio.ensure_future(stub.GetSite(registry_pb2.GetSiteRequest(name="slow")))
        await servicer.slow_started.wait()
        watch = health.Watch(health_pb2.HealthCheckRequest(service="emma.registry.v1.RegistryService"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        drain = asyncio.ensure_future(hosted.drain(5))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await in_flight).name == "slow"  # finished within the grace period
        await drain
    finally:
        await channel.close()


async def test_unary_rpcs_are_traced_with_the_callers_trace_context() -> None:
    provider = configure_tracing("emma-test")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hosted, channel = await _start(_Registry())
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetSite(
                registry_pb2.GetSiteRequest(name="organizations/o/sites/s"),
                metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
            )
        # grpc.aio sends an aborted call's status before the handler unwinds, and the server span ends
        # as it unwinds: the client can hold the error before the span is finished (one CI run read
        # none), so wait for it here, while the server still runs.
        async with asyncio.timeout(10):
            while not (
                spans := [s for s in exporter.get_finished_spans() if s.name.endswith("RegistryService/GetSite")]
            ):
                await asyncio.sleep(0.01)
    finally:
        await channel.close()
        await hosted.drain(0)
    assert len(spans) == 1
    span = spans[0]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.kind == trace.SpanKind.SERVER
    assert span.attributes is not None and span.attributes["emma.error_reason"] == "RESOURCE_NOT_FOUND"


class _Tracing(registry_pb2_grpc.RegistryServiceServicer):
    """Notes the span each call is served in."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    async def GetSite(
        self, request: registry_pb2.GetSiteRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Site:  # type: ignore[type-arg]
        trace_id, span_id = tracing.current_ids()
        self.seen.append((trace_id, span_id, trace.get_current_span().is_recording()))
        return registry_pb2.Site(name=request.name)


async def test_calls_get_their_trace_ids_while_no_processor_reads_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    # A provider of this process's kind without processors in configure_tracing's place (other tests of
    # this process may have added processors to the process's own).
    provider = tracing._Provider(shutdown_on_exit=False)
    monkeypatch.setattr(tracing, "_configured", provider)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("emma.services"))
    monkeypatch.setattr(tracing, "_sdk_counts_spans", False)
    servicer = _Tracing()
    hosted, channel = await _start(servicer)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        for _ in range(2):
            await stub.GetSite(registry_pb2.GetSiteRequest(name="organizations/o/sites/s"))
        traced = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]
        await stub.GetSite(registry_pb2.GetSiteRequest(name="organizations/o/sites/s"), metadata=traced)
    finally:
        await channel.close()
        await hosted.drain(0)
    (first, first_span, _), (second, _, _), (continued, span_id, recording) = servicer.seen
    assert len(first) == 32 and len(first_span) == 16 and first != second  # a new trace per call
    assert continued == trace_id and span_id not in ("", "00f067aa0ba902b7") and not recording
