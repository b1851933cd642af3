"""`emma service-account create|list|delete` as real subprocesses against a real IdentityService over a
real PostgreSQL: an admin creates an account whose printed login and password work (once printed,
stored only hashed), lists it, deletes it and its password stops working; every refusal (no such
organization or account, an id taken, not an admin, another tenant, a wrong password, no cloud) is one
line naming the call and the cloud's answer, exit code 1, and changes nothing."""

from __future__ import annotations

import asyncio
import os
import re

import asyncpg
import grpc
import pytest
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from tests.support.cli_process import EMMA
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, grant


async def service_account(*args: str, password: str = PASSWORD) -> tuple[int, list[str], str]:
    env = {**os.environ, "EMMA_PASSWORD": password}
    proc = await asyncio.create_subprocess_exec(
        EMMA, "service-account", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def login(port: int, email: str, password: str) -> identity_pb2.LoginResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await identity_pb2_grpc.IdentityServiceStub(ch).Login(
            identity_pb2.LoginRequest(email=email, password=password)
        )


async def test_an_admin_creates_lists_and_deletes_one(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    name = "organizations/acme/serviceAccounts/advisor"
    async with host(["identity"]) as (server, _):
        cloud = ("--cloud", f"127.0.0.1:{server.port}", "--email", admin.email)
        code, lines, err = await service_account("list", "acme", *cloud)
        assert (code, lines) == (0, ["organizations/acme has no service accounts"]), err

        code, lines, err = await service_account("create", name, "--display-name", "dispatch advisor", *cloud)
        assert code == 0, err
        created = re.fullmatch(rf"created {name} \(recommender\), user (users/\S+)", lines[0])
        assert created is not None, lines
        assert lines[1] == "login: advisor@acme.service.emma", lines
        shown = re.fullmatch(r"password: (\S+)  \(shown once; keep it in the program's secret store\)", lines[2])
        assert shown is not None and len(lines) == 3, lines
        password = shown.group(1)
        stored = await db.fetchval("SELECT password_hash FROM identity.users WHERE email = 'advisor@acme.service.emma'")
        assert stored.startswith("$argon2id$") and password not in stored

        # The printed login and password work, and the account is a member of nothing.
        session = await login(server.port, "advisor@acme.service.emma", password)
        assert f"users/{session.user.name.split('/')[-1]}" == created.group(1)
        assert list(session.user.memberships) == []

        code, lines, err = await service_account("list", "organizations/acme", *cloud)
        assert code == 0, err
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf'{name} "dispatch advisor" recommender, login advisor@acme.service.emma, '
            rf"created \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ by {admin.name}",
            lines[0],
        ), lines
        assert password not in lines[0]

        code, lines, err = await service_account("delete", name, *cloud)
        assert code == 0, err
        assert lines == [f"deleted {name}; its sessions have ended and its password no longer works"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await login(server.port, "advisor@acme.service.emma", password)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        code, lines, err = await service_account("list", "acme", *cloud)
        assert (code, lines) == (0, ["organizations/acme has no service accounts"]), err

    # Created and deleted through the API, so audited as the admin's calls, in the organization.
    rows = await db.fetch(
        """SELECT method, actor, resource FROM identity.audit_entries
           WHERE org_id = 'acme' AND resource = $1 ORDER BY id""",
        name,
    )
    assert [(r["method"].rsplit("/", 1)[-1], r["actor"], r["resource"]) for r in rows] == [
        ("CreateServiceAccount", admin.name, name),
        ("DeleteServiceAccount", admin.name, name),
    ]


async def test_refusals_are_one_line_and_exit_1(host: Host, db: asyncpg.Connection) -> None:
    admin = await grant(db, "acme", "admin")
    operator = await grant(db, "acme", "operator")
    viewer = await grant(db, "acme", "viewer")
    stranger = await grant(db, "globex", "admin")
    taken = "organizations/acme/serviceAccounts/taken"  # ids apart from the other test's: one database
    async with host(["identity"]) as (server, _):
        cloud = f"127.0.0.1:{server.port}"
        code, lines, err = await service_account("create", taken, "--cloud", cloud, "--email", admin.email)
        assert code == 0, err
        password = lines[2].split()[1]
        cases = [
            # The organization does not exist (the answer of one the caller is not a member of).
            (("create", "organizations/nowhere/serviceAccounts/x"), admin, PASSWORD, "creating", "NOT_FOUND"),
            (("list", "nowhere"), admin, PASSWORD, "listing the service accounts of", "NOT_FOUND"),
            # The id is taken: said so, with what to do, since the old password cannot be shown again.
            (("create", taken), admin, PASSWORD, f"creating {taken}", "ALREADY_EXISTS"),
            (("delete", "organizations/acme/serviceAccounts/gone"), admin, PASSWORD, "deleting", "NOT_FOUND"),
            # Not an admin of the organization.
            (("create", "organizations/acme/serviceAccounts/x"), operator, PASSWORD, "creating", "PERMISSION_DENIED"),
            (("list", "acme"), viewer, PASSWORD, "listing", "PERMISSION_DENIED"),
            (("delete", taken), operator, PASSWORD, f"deleting {taken}", "PERMISSION_DENIED"),
            # Another tenant's admin learns nothing: as if the organization did not exist.
            (("list", "acme"), stranger, PASSWORD, "listing", "NOT_FOUND"),
            (("delete", taken), stranger, PASSWORD, "deleting", "NOT_FOUND"),
            # The wrong password.
            (("list", "acme"), admin, "wrong password", f"logging in as {admin.email}", "UNAUTHENTICATED"),
        ]
        for args, who, secret, step, code_name in cases:
            code, lines, err = await service_account(*args, "--cloud", cloud, "--email", who.email, password=secret)
            assert code == 1 and lines == [], (args, lines, err)
            assert err.startswith(f"emma service-account {args[0]}: error: {step}") and code_name in err, (args, err)
            assert len(err.strip().splitlines()) == 1, err
            if code_name == "ALREADY_EXISTS":
                assert "pick another id" in err, err
        # The account itself manages nothing: it is a member of no organization.
        code, lines, err = await service_account(
            "list", "acme", "--cloud", cloud, "--email", "taken@acme.service.emma", password=password
        )
        assert code == 1 and "listing the service accounts of organizations/acme: NOT_FOUND" in err, err
        # Caught before anything is sent.
        for args, message in (
            (("create", "acme/advisor"), "'acme/advisor' is not organizations/{organization}/serviceAccounts/"),
            (("create", "organizations/acme/serviceAccounts/Advisor"), "'Advisor' in"),
            (("delete", "organizations/acme/users/x"), "is not organizations/{organization}/serviceAccounts/"),
            (("list", "organizations/Acme"), "'organizations/Acme' is not organizations/{organization}"),
        ):
            code, lines, err = await service_account(*args, "--cloud", cloud, "--email", admin.email)
            assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        # Nothing changed: still the one account, and no other user under the service suffix.
        accounts = await db.fetch("SELECT account_id FROM identity.service_accounts WHERE account_id <> 'advisor'")
        assert [r["account_id"] for r in accounts] == ["taken"]
        logins = await db.fetch(
            """SELECT email FROM identity.users
               WHERE email LIKE '%.service.emma' AND email <> 'advisor@acme.service.emma'"""
        )
        assert [r["email"] for r in logins] == ["taken@acme.service.emma"]
    # Nothing listening any more.
    code, lines, err = await service_account("list", "acme", "--cloud", cloud, "--email", admin.email)
    assert code == 1 and "cannot reach the cloud at" in err and "is it running?" in err, err
    # A usage error is argparse's: exit 2.
    code, lines, err = await service_account("create", taken)
    assert code == 2 and "--email" in err, err
