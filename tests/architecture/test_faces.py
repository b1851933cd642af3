"""Each domain's package face is pinned: what other packages may use of a domain is a deliberate list.

A change to a face (a name added or removed) fails here until this pin is edited with it, so the
public API of a domain changes only on purpose, and in review. Every name in `__all__` must exist,
and the face must declare what the architecture tests read (DEPENDS_ON, TABLES, POLICY, SERVICES).
"""

from __future__ import annotations

import importlib

import pytest

from tests.architecture.test_layers import domains

FACES: dict[str, list[str]] = {
    "services.identity": [
        "ADMIN",
        "Access",
        "AuthConfig",
        "AuthInterceptor",
        "AuthState",
        "Caller",
        "DEPENDS_ON",
        "EdgeDirectory",
        "EdgeIdentity",
        "POLICY",
        "Passwords",
        "SERVICES",
        "TABLES",
        "accounts",
        "auth_state_for",
        "authenticate_edge_key",
        "call_state",
        "caller",
        "create_organization",
        "delete_organization",
        "edge_key_revoked",
        "erase_audit_requests",
        "issue_edge_key",
        "note_audit",
        "organization",
        "organization_exists",
        "organizations",
        "password_problem",
        "register_policy",
        "rename_organization",
        "revoke_edge_key",
        "revoke_edge_keys_of",
        "set_membership",
        "use_edge_directory",
        "write_entries",
    ],
    "services.registry": [
        "DEPENDS_ON",
        "EdgeConnection",
        "EdgeConnections",
        "EdgeDataEraser",
        "POLICY",
        "RegistryPorts",
        "SERVICES",
        "SiteProfile",
        "TABLES",
        "all_sites",
        "channel_spec",
        "edge_inventory",
        "edge_name",
        "edge_names",
        "edge_pk",
        "edge_with_device",
        "edge_with_time_zone",
        "edges_of_organization",
        "edges_of_site",
        "ensure_edge",
        "site_location",
        "site_profile",
        "site_time_zone",
        "store_inventory",
        "use_ports",
    ],
    "services.telemetry": [
        "Columns",
        "DEPENDS_ON",
        "POLICY",
        "ROLLUP_BUCKET_US",
        "SERVICES",
        "SampleRows",
        "TABLES",
        "copy_samples",
        "create_partitions",
        "erase_edge_telemetry",
        "last_stored_batch_seq",
        "latest_value",
        "record_batches",
        "register_channels",
        "roll_up_closed_buckets",
        "samples_copy_payload",
    ],
    "services.command": [
        "ACKS_PER_SECOND",
        "CommandRelay",
        "CommandSink",
        "DEPENDS_ON",
        "POLICY",
        "SERVICES",
        "TABLES",
        "TokenBucket",
    ],
    "services.market": [
        "CapacitySeries",
        "DEPENDS_ON",
        "DocumentError",
        "DocumentKind",
        "FlowSeries",
        "MarketDocument",
        "MarketError",
        "POLICY",
        "PriceSeries",
        "Product",
        "SERVICES",
        "SaveOutcome",
        "SaveResult",
        "Slot",
        "Source",
        "StoreError",
        "TABLES",
        "save_document",
        "save_warnings",
    ],
    "services.forecast": [
        "DEPENDS_ON",
        "POLICY",
        "SERVICES",
        "TABLES",
    ],
    "services.edgelink": [
        "DEPENDS_ON",
        "POLICY",
        "SERVICES",
        "TABLES",
        "edge_connections",
    ],
}


def test_every_domain_is_pinned() -> None:
    assert sorted(FACES) == sorted(domains())


@pytest.mark.parametrize("name", sorted(FACES))
def test_face_is_as_pinned(name: str) -> None:
    face = importlib.import_module(name)
    exported = sorted(face.__all__)
    assert exported == FACES[name], f"{name}.__all__ changed; update the pin if that is intended"
    assert [n for n in exported if not hasattr(face, n)] == []
    for declared in ("DEPENDS_ON", "TABLES", "POLICY", "SERVICES"):
        assert declared in exported, f"{name} does not export {declared}"
