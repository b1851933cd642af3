"""The v1 contracts: buf lint and breaking, gen/ in sync, and the API rules of docs/contracts.md."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from emma.common.v1 import errors_pb2
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor as d

from tests.support.contract_descriptors import messages, methods, services
from tools import protogen

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SERVICES = {
    "emma.edge.v1.EdgeLinkService",
    "emma.telemetry.v1.TelemetryService",
    "emma.command.v1.CommandService",
    "emma.registry.v1.RegistryService",
    "emma.identity.v1.IdentityService",
    "emma.identity.v1.AuditService",
    "emma.market.v1.MarketDataService",
    "emma.forecast.v1.ForecastService",
    "emma.optimizer.v1.OptimizerService",
    "emma.alarm.v1.AlarmService",
}


def http_rule(method: d.MethodDescriptor) -> http_pb2.HttpRule | None:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def test_the_six_services_exist() -> None:
    assert {s.full_name for s in services()} == EXPECTED_SERVICES
    connect = next(m for m in methods() if m.full_name == "emma.edge.v1.EdgeLinkService.Connect")
    assert connect.client_streaming and connect.server_streaming


def test_buf_lint_passes() -> None:
    protogen.lint()


def test_buf_breaking_against_the_committed_baseline_passes() -> None:
    protogen.breaking()


def test_buf_breaking_detects_a_deleted_field(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(protogen.sync_deps(), tmp_path / "build" / "protodeps")
    proto = tmp_path / "protos" / "emma" / "edge" / "v1" / "edge_link.proto"
    text = proto.read_text()
    assert "  uint64 batch_seq = 1;\n" in text
    proto.write_text(text.replace("  uint64 batch_seq = 1;\n", "", 1))
    with pytest.raises(protogen.ProtogenError, match=r'Previously present field "1" with name "batch_seq"'):
        protogen.breaking(workspace=tmp_path)


def test_generated_code_matches_a_fresh_generation() -> None:
    assert protogen.diff_generated() == []


def test_every_non_bidi_rpc_has_an_http_rule() -> None:
    missing = [
        m.full_name for m in methods() if not (m.client_streaming and m.server_streaming) and http_rule(m) is None
    ]
    assert missing == []


def test_bidi_rpcs_are_not_exposed_over_http() -> None:
    assert [m.full_name for m in methods() if m.client_streaming and http_rule(m) is not None] == []


# Calls that change nothing stored or that must not be replayed with a cached answer.
NOT_IDEMPOTENT_BY_DESIGN = {
    "emma.identity.v1.IdentityService.Login",  # each login is a new session
    "emma.identity.v1.IdentityService.RefreshToken",  # refresh tokens rotate; a replay must fail
}


def test_mutating_rpcs_carry_request_id() -> None:
    missing = []
    for m in methods():
        rule = http_rule(m)
        if rule is None or rule.WhichOneof("pattern") == "get" or m.full_name in NOT_IDEMPOTENT_BY_DESIGN:
            continue
        if "request_id" not in m.input_type.fields_by_name:
            missing.append(m.full_name)
    assert missing == []


def test_list_methods_paginate() -> None:
    for m in methods():
        if m.name.startswith("List") and m.name != "ListLatestValues":
            assert {"page_size", "page_token"} <= set(m.input_type.fields_by_name), m.full_name
            assert "next_page_token" in m.output_type.fields_by_name, m.full_name


def test_times_are_timestamps_named_time() -> None:
    for msg in messages():
        for f in msg.fields:
            if f.name.endswith("_time"):
                assert f.message_type is not None, f.full_name
                assert f.message_type.full_name == "google.protobuf.Timestamp", f.full_name
            if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
                assert f.name == "time" or f.name.endswith("_time"), f.full_name


UNIT_SUFFIXES = ("_w", "_kw", "_wh", "_kwh", "_eur_per_mwh", "_deg", "_ms", "_s", "_bytes", "_count")
PHYSICAL = re.compile(r"(power|energy|price|limit|latitude|longitude|lateness|offset|bytes)")


def test_physical_quantities_carry_their_unit_in_the_name() -> None:
    offenders = []
    for msg in messages():
        for f in msg.fields:
            numeric = f.type in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT)
            if numeric and PHYSICAL.search(f.name) and not f.name.endswith(UNIT_SUFFIXES):
                offenders.append(f.full_name)
    assert offenders == []


def test_telemetry_batch_is_columnar_and_packed() -> None:
    from emma.edge.v1 import edge_link_pb2

    batch = edge_link_pb2.TelemetryBatch.DESCRIPTOR
    for name in ("channel_indexes", "time_offsets_ms", "values"):
        field = batch.fields_by_name[name]
        assert field.is_repeated and field.message_type is None
        assert field.is_packed, name
    # Packed arrays: 1,000 points cost a few bytes each, not a nested message per point.
    msg = edge_link_pb2.TelemetryBatch(
        batch_seq=1,
        channel_indexes=[i % 20 for i in range(1000)],
        time_offsets_ms=list(range(1000)),
        values=[float(i) for i in range(1000)],
    )
    assert len(msg.SerializeToString()) < 1000 * 12


def test_error_reasons_named_in_contract_comments_exist() -> None:
    known = {n.removeprefix("ERROR_REASON_") for n in errors_pb2.ErrorReason.keys()}  # noqa: SIM118 (an EnumTypeWrapper, not a dict)
    text = "\n".join(p.read_text() for p in (ROOT / "protos").rglob("*.proto"))
    named = set()
    for block in re.findall(r"Errors: ([A-Z_, ()a-z]+)\.", text.replace("\n  //", " ")):
        named |= set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", block))
    # "(REASON)" after a described condition, as in the CommandService comment.
    named |= set(re.findall(r"\(([A-Z][A-Z_]{3,}_[A-Z_]+)\)", text))
    assert named, "the contract comments name no reasons"
    assert sorted(named - known) == []
