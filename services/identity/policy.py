"""Who may call what: the declarative table of every RPC's minimum role.

Each domain declares its RPCs' entries in its package face (POLICY) and the catalog registers them
here, next to the platform plumbing below. Every RPC the server hosts must have an entry; a method
without one is refused (deny by default) and tests/services/identity/test_rbac_matrix.py fails for it. The
organization a call acts on is read from the request field bound in the method's google.api.http
path ("{parent=organizations/*}"), so the table only says the minimum role.

  PUBLIC          no credentials (login, refresh, health, reflection)
  EDGE            an edge daemon, authenticated by the API key in its Hello (EdgeLink Connect)
  USER            any signed-in user; the servicer scopes what it returns to the caller
  PLATFORM_ADMIN  a user with the platform-admin flag. These entries are the flag's only powers
                  (today: creating and deleting organizations, RegistryService); everywhere else a
                  platform admin is an ordinary user: it reads or changes an organization's data,
                  users included, only through a membership of that organization, and its own
                  account can be changed by no one but itself (services/identity/users.py)
  VIEWER / OPERATOR / ADMIN   at least this role in the organization named by the request
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from emma.identity.v1 import identity_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import descriptor_pool


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

# Platform plumbing every server hosts. The domains' RPCs are registered by the catalog from each
# domain's package face (its POLICY), so a new domain brings its own entries.
POLICY: dict[str, Access] = {
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
}


def register_policy(entries: Mapping[str, Access]) -> None:
    """Add a domain's entries; a method may be given one access only."""
    for method, access in entries.items():
        if POLICY.setdefault(method, access) != access:
            raise ValueError(f"{method} has two policy entries: {POLICY[method].name} and {access.name}")
    method_info.cache_clear()  # an earlier lookup may have cached "no entry"


def full_method_name(method: pb_descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def contract_method(name: str) -> pb_descriptor.MethodDescriptor | None:
    """ "/emma.registry.v1.RegistryService/GetSite" -> its descriptor (the generated modules of every
    hosted domain are imported by then); None for methods outside the contracts (health, reflection)."""
    service, _, method = name.strip("/").partition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).methods_by_name.get(method)
    except KeyError:
        return None


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
    desc = contract_method(name)
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
