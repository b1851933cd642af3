"""Identity: tenants (organizations), users, memberships and roles, sessions, edge API keys, the audit
trail, and the authentication and authorisation of every call (the interceptor and its policy)."""

from __future__ import annotations

from typing import Any

from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from services.identity import accounts
from services.identity.accounts import (
    create_organization,
    delete_organization,
    organization,
    organization_exists,
    organizations,
    rename_organization,
    set_membership,
)
from services.identity.audit import AuditRow, audit_row, write_entries
from services.identity.call_audit import call_audit_row
from services.identity.config import AuthConfig
from services.identity.context import ADMIN, Caller, call_state, caller, note_audit
from services.identity.edge_directory import EdgeDirectory, use_edge_directory
from services.identity.edge_keys import (
    EdgeIdentity,
    authenticate_edge_key,
    authenticate_edge_keys,
    edge_key_revoked,
    issue_edge_key,
    revoke_edge_key,
    revoke_edge_keys_of,
)
from services.identity.erasure import erase_audit_requests
from services.identity.interceptor import AuthInterceptor
from services.identity.passwords import Passwords, password_problem
from services.identity.policy import Access, register_policy
from services.identity.service_accounts import RECOMMENDER as SERVICE_ACCOUNT_RECOMMENDER
from services.identity.service_accounts import ServiceAccountGrant, service_account_role
from services.identity.state import AuthState, auth_state_for
from services.platform.registration import ServiceSpec, service_spec
from services.platform.runtime import Runtime

# What other packages may use of identity; everything else in services/identity/ is private.
__all__ = [
    "ADMIN",
    "DEPENDS_ON",
    "POLICY",
    "SERVICES",
    "SERVICE_ACCOUNT_RECOMMENDER",
    "TABLES",
    "Access",
    "AuditRow",
    "AuthConfig",
    "AuthInterceptor",
    "AuthState",
    "Caller",
    "EdgeDirectory",
    "EdgeIdentity",
    "Passwords",
    "ServiceAccountGrant",
    "accounts",
    "audit_row",
    "auth_state_for",
    "authenticate_edge_key",
    "authenticate_edge_keys",
    "call_audit_row",
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
    "service_account_role",
    "set_membership",
    "use_edge_directory",
    "write_entries",
]

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON: tuple[str, ...] = ()
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "app.organizations",
    "identity.users",
    "identity.memberships",
    "identity.sessions",
    "identity.edge_api_keys",
    "identity.login_failures",
    "identity.audit_entries",
    "identity.service_accounts",
    # Trigger functions: audit rows are immutable; changes to credentials NOTIFY every replica; a
    # deleted service account takes its user along.
    "identity.audit_entries_immutable",
    "identity.edge_api_keys_changed",
    "identity.memberships_changed",
    "identity.notify_auth",
    "identity.service_account_deleted",
    "identity.sessions_changed",
    "identity.users_changed",
)


def _identity(runtime: Runtime) -> Any:
    from services.identity.servicer import IdentityServicer

    return IdentityServicer(runtime)


def _audit(runtime: Runtime) -> Any:
    from services.identity.audit import AuditServicer

    return AuditServicer(runtime)


# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "identity", identity_pb2, "IdentityService", identity_pb2_grpc.add_IdentityServiceServicer_to_server, _identity
    ),
    service_spec("audit", identity_pb2, "AuditService", identity_pb2_grpc.add_AuditServiceServicer_to_server, _audit),
)

_ID = "/emma.identity.v1.IdentityService/"
_AUD = "/emma.identity.v1.AuditService/"
# The minimum role of each RPC; the catalog registers it with the interceptor (policy.py: the roles).
# USER methods act on users/{user}: the servicer allows the caller themself, or an admin of every
# organization the target user belongs to (never the platform-admin flag; users.py).
POLICY: dict[str, Access] = {
    _ID + "Login": Access.PUBLIC,
    _ID + "RefreshToken": Access.PUBLIC,
    _ID + "Logout": Access.USER,
    _ID + "GetUser": Access.USER,
    _ID + "ListUsers": Access.ADMIN,
    _ID + "CreateUser": Access.ADMIN,
    _ID + "UpdateUser": Access.USER,
    _ID + "SetMembership": Access.ADMIN,
    _ID + "DeleteMembership": Access.ADMIN,
    _ID + "AcceptInvitation": Access.USER,  # the invited user, named in the token
    _ID + "ListSessions": Access.USER,
    _ID + "RevokeSession": Access.USER,
    _ID + "CreateEdgeApiKey": Access.ADMIN,
    _ID + "ListEdgeApiKeys": Access.ADMIN,
    _ID + "RevokeEdgeApiKey": Access.ADMIN,
    _ID + "CreateServiceAccount": Access.ADMIN,
    _ID + "GetServiceAccount": Access.ADMIN,
    _ID + "ListServiceAccounts": Access.ADMIN,
    _ID + "DeleteServiceAccount": Access.ADMIN,
    _AUD + "ListAuditEntries": Access.ADMIN,
    _AUD + "GetAuditEntry": Access.ADMIN,
}
