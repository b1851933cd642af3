"""`emma service-account create|list|delete`: an organization's service accounts (the logins of
programs such as a recommendation service; docs/security.md "Service accounts").

It goes through the API as `emma edge init` and `emma forecast run` do (a login as --email, the
password from EMMA_PASSWORD or a prompt), not through the database as `emma admin` does: managing
service accounts is an organization admin's right, so the role check, the validation, the audit row
(actor: that admin) and the password generation are IdentityService's own, and the same command works
against `emma up` and a cloud elsewhere. The generated password is printed once, by `create`; nothing
can show it again (rotation is create another, switch the program over, delete the first). Every
refusal (not an admin, no such organization or account, an id taken, a wrong password, no cloud) is one
line naming the call and the cloud's answer, exit code 1.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC
from typing import Any

import grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from core.errors import ConfigError, EmmaError
from launcher.cloud_client import cloud_channel, failure_text, operator_password, tls_for
from launcher.service_account_args import NAME_FORM
from launcher.times import utc_text
from services.names import ID_PATTERN

CALL_TIMEOUT_S = 15.0
ROLES = {"recommender": identity_pb2.SERVICE_ACCOUNT_ROLE_RECOMMENDER}
_PAGE_SIZE = 1000


class ServiceAccountCliError(EmmaError):
    """The cloud refused or could not be reached; the message says which call and why."""


def account_name(text: str) -> tuple[str, str]:
    """NAME -> (organization resource name, account id); checked here so a typo is named before any call."""
    parts = text.split("/")
    if len(parts) != 4 or parts[0] != "organizations" or parts[2] != "serviceAccounts":
        raise ConfigError(f"{text!r} is not {NAME_FORM}")
    for part, what in ((parts[1], "organization"), (parts[3], "service account")):
        if not ID_PATTERN.match(part):
            raise ConfigError(f"{part!r} in {text!r} is not a {what} id (lowercase letters, digits, hyphens)")
    return f"organizations/{parts[1]}", parts[3]


def organization_name(text: str) -> str:
    """organizations/{org} or the bare id -> organizations/{org}."""
    org = text.removeprefix("organizations/")
    if not ID_PATTERN.match(org):
        raise ConfigError(f"{text!r} is not organizations/{{organization}} (lowercase letters, digits, hyphens)")
    return f"organizations/{org}"


def _role(role: int) -> str:
    return identity_pb2.ServiceAccountRole.Name(role).removeprefix("SERVICE_ACCOUNT_ROLE_").lower()  # type: ignore[arg-type]


def account_line(a: identity_pb2.ServiceAccount) -> str:
    shown = f' "{a.display_name}"' if a.display_name else ""
    created = utc_text(a.create_time.ToDatetime(tzinfo=UTC).replace(microsecond=0))
    return f"{a.name}{shown} {_role(a.role)}, login {a.login}, created {created} by {a.creator}"


async def _call(
    args: argparse.Namespace,
    env: dict[str, str],
    step: str,
    call: Callable[[identity_pb2_grpc.IdentityServiceAsyncStub, tuple[tuple[str, str], ...]], Awaitable[Any]],
) -> Any:
    """Log in as --email, then `call(stub, auth metadata)`; a refusal becomes one line naming `step`."""
    password = operator_password(env, args.email)
    async with cloud_channel(args.cloud, tls_for(args.cloud, args.tls), args.ca_file) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        current = f"logging in as {args.email}"
        try:
            login = await stub.Login(
                identity_pb2.LoginRequest(email=args.email, password=password), timeout=CALL_TIMEOUT_S
            )
            current = step
            return await call(stub, (("authorization", f"Bearer {login.access_token}"),))
        except grpc.aio.AioRpcError as exc:
            text = failure_text(current, exc, args.cloud)
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                text += " (its password cannot be shown again: pick another id, or delete it and create it anew)"
            raise ServiceAccountCliError(text) from None


async def create_account(args: argparse.Namespace, env: dict[str, str], say: Callable[[str], None] = print) -> int:
    parent, account_id = account_name(args.name)
    request = identity_pb2.CreateServiceAccountRequest(
        parent=parent,
        service_account_id=account_id,
        service_account=identity_pb2.ServiceAccount(display_name=args.display_name, role=ROLES[args.role]),
        # A fresh key: a retry with a stored key would get the account without its password.
        request_id=str(uuid.uuid4()),
    )
    created: identity_pb2.ServiceAccount = await _call(
        args,
        env,
        f"creating {args.name}",
        lambda stub, auth: stub.CreateServiceAccount(request, metadata=auth, timeout=CALL_TIMEOUT_S),
    )
    say(f"created {created.name} ({_role(created.role)}), user {created.user}")
    say(f"login: {created.login}")
    say(f"password: {created.password}  (shown once; keep it in the program's secret store)")
    return 0


async def list_accounts(args: argparse.Namespace, env: dict[str, str], say: Callable[[str], None] = print) -> int:
    parent = organization_name(args.organization)

    async def every_page(
        stub: identity_pb2_grpc.IdentityServiceAsyncStub, auth: tuple[tuple[str, str], ...]
    ) -> list[identity_pb2.ServiceAccount]:
        found: list[identity_pb2.ServiceAccount] = []
        token = ""
        while True:
            page = await stub.ListServiceAccounts(
                identity_pb2.ListServiceAccountsRequest(parent=parent, page_size=_PAGE_SIZE, page_token=token),
                metadata=auth,
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(page.service_accounts)
            token = page.next_page_token
            if not token:
                return found

    accounts: list[identity_pb2.ServiceAccount] = await _call(
        args, env, f"listing the service accounts of {parent}", every_page
    )
    for account in accounts:
        say(account_line(account))
    if not accounts:
        say(f"{parent} has no service accounts")
    return 0


async def delete_account(args: argparse.Namespace, env: dict[str, str], say: Callable[[str], None] = print) -> int:
    account_name(args.name)
    request = identity_pb2.DeleteServiceAccountRequest(name=args.name, request_id=str(uuid.uuid4()))
    await _call(
        args,
        env,
        f"deleting {args.name}",
        lambda stub, auth: stub.DeleteServiceAccount(request, metadata=auth, timeout=CALL_TIMEOUT_S),
    )
    say(f"deleted {args.name}; its sessions have ended and its password no longer works")
    return 0


def run_service_account_cli(args: argparse.Namespace, env: dict[str, str]) -> Coroutine[Any, Any, int]:
    if args.service_account_command == "create":
        return create_account(args, env)
    if args.service_account_command == "list":
        return list_accounts(args, env)
    if args.service_account_command == "delete":
        return delete_account(args, env)
    raise AssertionError(args.service_account_command)
