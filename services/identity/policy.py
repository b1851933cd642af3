"""Who may call what: the one declarative table of every RPC's minimum role.

Every RPC the server hosts must have an entry; a method without one is refused (deny by default) and
tests/identity/test_rbac_matrix.py fails for it. The organization a call acts on is read from the
request field bound in the method's google.api.http path ("{parent=organizations/*}"), so the table
only says the minimum role.

  PUBLIC          no credentials (login, refresh, health, reflection)
  EDGE            an edge daemon, authenticated by the API key in its Hello (EdgeLink Connect)
  USER            any signed-in user; the servicer scopes what it returns to the caller
  PLATFORM_ADMIN  a user with the platform-admin flag (creating and deleting organizations)
  VIEWER / OPERATOR / ADMIN   at least this role in the organization named by the request
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from emma.command.v1 import command_pb2
from emma.edge.v1 import edge_link_pb2
from emma.identity.v1 import identity_pb2
from emma.registry.v1 import registry_pb2
from emma.telemetry.v1 import telemetry_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor as pb_descriptor


class Access(enum.IntEnum):
    PUBLIC = -3
    EDGE = -2
    USER = -1
    VIEWER = identity_pb2.ROLE_VIEWER
    OPERATOR = identity_pb2.ROLE_OPERATOR
    ADMIN = identity_pb2.ROLE_ADMIN
    PLATFORM_ADMIN = 10

    @property
    def is_org_role(self) -> bool:
        return self in (Access.VIEWER, Access.OPERATOR, Access.ADMIN)


PUBLIC, EDGE, USER = Access.PUBLIC, Access.EDGE, Access.USER
VIEWER, OPERATOR, ADMIN, PLATFORM_ADMIN = Access.VIEWER, Access.OPERATOR, Access.ADMIN, Access.PLATFORM_ADMIN

_REG = "/emma.registry.v1.RegistryService/"
_ID = "/emma.identity.v1.IdentityService/"
_AUD = "/emma.identity.v1.AuditService/"
_TEL = "/emma.telemetry.v1.TelemetryService/"
_CMD = "/emma.command.v1.CommandService/"

POLICY: dict[str, Access] = {
    # Platform plumbing.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
    # The edge stream: the API key inside the Hello authenticates it.
    "/emma.edge.v1.EdgeLinkService/Connect": EDGE,
    # Registry.
    _REG + "GetOrganization": VIEWER,
    _REG + "ListOrganizations": USER,
    _REG + "CreateOrganization": PLATFORM_ADMIN,
    _REG + "UpdateOrganization": ADMIN,
    _REG + "DeleteOrganization": PLATFORM_ADMIN,
    _REG + "GetSite": VIEWER,
    _REG + "ListSites": VIEWER,
    _REG + "CreateSite": ADMIN,
    _REG + "UpdateSite": ADMIN,
    _REG + "DeleteSite": ADMIN,
    _REG + "GetEdge": VIEWER,
    _REG + "ListEdges": VIEWER,
    _REG + "CreateEdge": ADMIN,
    _REG + "UpdateEdge": ADMIN,
    _REG + "DeleteEdge": ADMIN,
    _REG + "GetDevice": VIEWER,
    _REG + "ListDevices": VIEWER,
    _REG + "CreateDevice": ADMIN,
    _REG + "UpdateDevice": ADMIN,
    _REG + "DeleteDevice": ADMIN,
    _REG + "GetDeviceProfile": VIEWER,
    _REG + "ListDeviceProfiles": VIEWER,
    _REG + "CreateDeviceProfile": ADMIN,
    _REG + "UpdateDeviceProfile": ADMIN,
    _REG + "DeleteDeviceProfile": ADMIN,
    _REG + "BulkProvision": ADMIN,
    _REG + "EraseSite": ADMIN,
    # Identity. USER methods act on users/{user}: the servicer allows the caller themself, or an admin
    # of every organization the target user belongs to.
    _ID + "Login": PUBLIC,
    _ID + "RefreshToken": PUBLIC,
    _ID + "Logout": USER,
    _ID + "GetUser": USER,
    _ID + "ListUsers": ADMIN,
    _ID + "CreateUser": ADMIN,
    _ID + "UpdateUser": USER,
    _ID + "SetMembership": ADMIN,
    _ID + "DeleteMembership": ADMIN,
    _ID + "ListSessions": USER,
    _ID + "RevokeSession": USER,
    _ID + "CreateEdgeApiKey": ADMIN,
    _ID + "ListEdgeApiKeys": ADMIN,
    _ID + "RevokeEdgeApiKey": ADMIN,
    # Audit.
    _AUD + "ListAuditEntries": ADMIN,
    _AUD + "GetAuditEntry": ADMIN,
    # Telemetry.
    _TEL + "ListLatestValues": VIEWER,
    _TEL + "QueryHistory": VIEWER,
    _TEL + "StreamLiveValues": VIEWER,
    _TEL + "ListChannels": VIEWER,
    _TEL + "ExportSiteTelemetry": VIEWER,
    # Commands.
    _CMD + "CreateCommand": OPERATOR,
    _CMD + "GetCommand": VIEWER,
    _CMD + "ListCommands": VIEWER,
    _CMD + "WatchCommand": VIEWER,
    _CMD + "CancelCommand": OPERATOR,
    _CMD + "CreateFleetDispatch": OPERATOR,
    _CMD + "GetFleetDispatch": VIEWER,
    _CMD + "ListFleetDispatches": VIEWER,
}

CONTRACT_FILES = [
    edge_link_pb2.DESCRIPTOR,
    telemetry_pb2.DESCRIPTOR,
    command_pb2.DESCRIPTOR,
    registry_pb2.DESCRIPTOR,
    identity_pb2.DESCRIPTOR,
]


def full_method_name(method: pb_descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@cache
def contract_methods() -> dict[str, pb_descriptor.MethodDescriptor]:
    return {full_method_name(m): m for f in CONTRACT_FILES for s in f.services_by_name.values() for m in s.methods}


@dataclass(frozen=True)
class MethodInfo:
    """What the interceptor needs to know about one contract method."""

    name: str
    access: Access
    http_verb: str  # "get", "post", "patch", "delete", "put" or "" (Connect)
    resource_field: str | None  # dotted request field bound in the http path, e.g. "site.name"
    resource_pattern: str | None  # its pattern, e.g. "organizations/*/sites/*"
    request_type: type | None

    @property
    def mutating(self) -> bool:
        """Everything that is not an HTTP GET changes something and is audited."""
        return self.http_verb not in ("get", "")


_VAR = re.compile(r"\{([a-z_.]+)(?:=([^}]*))?\}")


@cache
def method_info(name: str) -> MethodInfo | None:
    """The policy entry with the http binding of a contract method; None for unknown methods."""
    access = POLICY.get(name)
    if access is None:
        return None
    desc = contract_methods().get(name)
    if desc is None:  # health, reflection
        return MethodInfo(name, access, "", None, None, None)
    rule: Any = desc.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[index]
    verb = rule.WhichOneof("pattern") or ""
    path = getattr(rule, verb) if verb and verb != "custom" else ""
    match = _VAR.search(path)
    from google.protobuf import message_factory

    request_type = message_factory.GetMessageClass(desc.input_type)
    return MethodInfo(
        name,
        access,
        verb,
        match.group(1) if match else None,
        (match.group(2) or "*") if match else None,
        request_type,
    )


def field_value(message: object, dotted: str) -> str:
    """The value of a dotted string field path ("site.name") of a request, "" when unset."""
    value: object = message
    for part in dotted.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


_ORG = re.compile(r"^organizations/([^/]+)(?:/|$)")


def org_of(resource: str) -> str | None:
    """The organization id a resource name belongs to, if it is under organizations/{org}."""
    m = _ORG.match(resource)
    return m.group(1) if m else None
