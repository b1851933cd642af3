"""Who is calling: the API servicers use to scope every query to the caller's organizations.

The auth interceptor authenticates each call and puts a Caller in a context variable before the
servicer runs; servicers ask for it with `caller(context)`:

    me = caller(context)
    site = parse_site(request.name)
    me.require_org(site.org, resource=request.name)           # NOT_FOUND for other tenants
    me.require_org(site.org, OPERATOR, resource=request.name)  # also PERMISSION_DENIED below operator

The interceptor already checks the minimum role of the method for the organization in the request's
http path; servicers call require_org for every other organization a request touches (a device
profile named inside a body, a channel of a QueryHistory request) and to filter lists.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from emma.common.v1 import errors_pb2
from emma.identity.v1 import identity_pb2

from services.errors import ApiError, not_found
from services.names import EdgeName

VIEWER = identity_pb2.ROLE_VIEWER
OPERATOR = identity_pb2.ROLE_OPERATOR
ADMIN = identity_pb2.ROLE_ADMIN
ROLE_NAMES: dict[int, str] = {VIEWER: "viewer", OPERATOR: "operator", ADMIN: "admin"}


@dataclass(frozen=True)
class Caller:
    """An authenticated user or edge. `roles` maps organization id -> Role value (1..3)."""

    kind: str  # "user", "edge" or "anonymous" (PUBLIC methods)
    user_id: str = ""
    email: str = ""
    session_id: str = ""
    platform_admin: bool = False
    roles: Mapping[str, int] = field(default_factory=dict)
    edge: EdgeName | None = None
    key_id: str = ""

    @property
    def actor(self) -> str:
        """The audit actor: users/{user}, the edge's resource name, or "anonymous"."""
        if self.kind == "user":
            return f"users/{self.user_id}"
        if self.kind == "edge" and self.edge is not None:
            return str(self.edge)
        return "anonymous"

    @property
    def actor_kind(self) -> int:
        if self.kind == "user":
            return identity_pb2.ACTOR_KIND_USER
        if self.kind == "edge":
            return identity_pb2.ACTOR_KIND_EDGE
        return identity_pb2.ACTOR_KIND_UNSPECIFIED

    def role_in(self, org: str) -> int:
        """The caller's role in the organization, 0 when not a member (edges: none)."""
        return int(self.roles.get(org, 0))

    def is_member(self, org: str) -> bool:
        return self.role_in(org) > 0

    def orgs(self, min_role: int = VIEWER) -> list[str]:
        """The organizations where the caller has at least min_role, sorted."""
        return sorted(o for o, r in self.roles.items() if r >= min_role)

    def require_org(self, org: str, role: int = VIEWER, resource: str | None = None) -> None:
        """Allow only members of `org` with at least `role`.

        Not a member: NOT_FOUND with RESOURCE_NOT_FOUND naming `resource` (or the organization), the
        answer a missing resource gets, so other tenants' names do not leak. A member below `role`:
        PERMISSION_DENIED with ROLE_INSUFFICIENT.
        """
        have = self.role_in(org)
        if have == 0:
            raise not_found(resource or f"organizations/{org}")
        if have < role:
            raise role_insufficient(org, role, have)

    def require_user(self) -> None:
        if self.kind != "user":
            raise credentials_missing()


def role_insufficient(org: str, need: int, have: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        errors_pb2.ERROR_REASON_ROLE_INSUFFICIENT,
        f"this needs the {ROLE_NAMES.get(need, need)} role in organizations/{org}; "
        f"you are {ROLE_NAMES.get(have, 'not a member')}",
        metadata={"organization": f"organizations/{org}", "required_role": ROLE_NAMES.get(need, str(need))},
    )


def credentials_missing() -> ApiError:
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        errors_pb2.ERROR_REASON_CREDENTIALS_MISSING,
        'send "authorization: Bearer <access token>" metadata (IdentityService.Login issues one)',
    )


ANONYMOUS = Caller(kind="anonymous")


@dataclass
class CallState:
    """Per-call state shared by the interceptor and the servicer (audit details)."""

    caller: Caller
    method: str
    client_address: str
    audit_resource: str | None = None
    audit_actor: Caller | None = None  # Login: the user who logged in (the call itself is anonymous)
    audit_written: bool = False  # the servicer wrote the call's audit row in its own transaction
    # Organizations the servicer vouches the call acted in although the caller is no member of them
    # (a service account's own organization), so its audit rows land there and not at platform level.
    audit_extra_orgs: list[str] = field(default_factory=list)


_STATE: contextvars.ContextVar[CallState | None] = contextvars.ContextVar("emma_call_state", default=None)


def enter_call_state(state: CallState) -> CallState | None:
    """Make `state` the current call's; returns the state it replaces, for leave_call_state."""
    previous = _STATE.get()
    _STATE.set(state)
    return previous


def leave_call_state(previous: CallState | None) -> None:
    """Put back the state enter_call_state replaced.

    By value, not by resetting a ContextVar token: when a client goes away while a server stream is
    blocked sending, grpc.aio drops the stream's generator unfinished and the event loop's
    async-generator finalizer closes it later in a task of its own, i.e. in another context, where
    resetting the token would raise ValueError ("Task exception was never retrieved"). Setting a
    value is valid in any context; in the call's own context it restores exactly what was there.
    """
    _STATE.set(previous)


def call_state() -> CallState | None:
    return _STATE.get()


def caller(context: Any = None) -> Caller:
    """The authenticated caller of the current RPC.

    Fails closed: outside a call that passed the auth interceptor it raises UNAUTHENTICATED, so a
    servicer hosted without the interceptor serves nothing. `context` is accepted for readability at
    call sites (the caller is kept in a context variable of the call's task).
    """
    state = _STATE.get()
    if state is None:
        raise credentials_missing()
    return state.caller


def note_audit(
    resource: str | None = None,
    *,
    actor: Caller | None = None,
    written: bool | None = None,
    orgs: list[str] | None = None,
) -> None:
    """Tell the audit writer which resource the call touched (e.g. the one a Create made), and with
    `orgs` the organizations a non-member acted in (a service account's)."""
    state = _STATE.get()
    if state is None:
        return
    if orgs is not None:
        state.audit_extra_orgs = list(orgs)
    if resource is not None:
        state.audit_resource = resource
    if actor is not None:
        state.audit_actor = actor
    if written is not None:
        state.audit_written = written
