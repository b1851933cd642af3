"""The arguments of `emma service-account create|list|delete` (the commands: service_account_cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

from launcher.cloud_args import add_cloud_flags
from launcher.task_args import add_task_group

NAME_FORM = "organizations/{organization}/serviceAccounts/{service_account}"
# The --role names; service_account_cli maps each to its ServiceAccountRole.
ROLE_NAMES = ("recommender",)


def add_service_account_parser(sub: Any) -> None:
    tasks = add_task_group(
        sub,
        "service-account",
        help="create, list and delete an organization's service accounts",
        description="Service accounts are the logins of programs (a recommendation service), each with one role "
        "in one organization (docs/security.md). Every task logs in as --email, an admin of the organization; the "
        "password comes from EMMA_PASSWORD, else a prompt on a terminal.",
        dest="service_account_command",
    )
    create = tasks.add_parser(
        "create",
        help="create a service account and print its login and password once",
        description="Create NAME with --role and print its login and its generated password. The password is "
        "shown this once and stored only as a hash: put it in the program's secret store. To rotate it, create a "
        "second account, switch the program over, then delete the first.",
    )
    create.add_argument("name", metavar="NAME", help=NAME_FORM + ", e.g. organizations/demo/serviceAccounts/advisor")
    create.add_argument(
        "--role", choices=ROLE_NAMES, default="recommender", help="what it may do (default recommender)"
    )
    create.add_argument("--display-name", default="", help='the name shown to people, e.g. "dispatch advisor"')
    _add_cloud_flags(create)
    listing = tasks.add_parser(
        "list",
        help="list an organization's service accounts",
        description="List ORGANIZATION's service accounts (never their passwords), one per line.",
    )
    listing.add_argument("organization", metavar="ORGANIZATION", help="organizations/{organization}, or its id")
    _add_cloud_flags(listing)
    delete = tasks.add_parser(
        "delete",
        help="delete a service account; its sessions end at once",
        description="Delete NAME with the user it logs in as: its tokens and password stop working within a "
        "second on every replica.",
    )
    delete.add_argument("name", metavar="NAME", help=NAME_FORM)
    _add_cloud_flags(delete)


def _add_cloud_flags(p: argparse.ArgumentParser) -> None:
    add_cloud_flags(p, "an admin of the organization, e.g. admin@emma.local")
