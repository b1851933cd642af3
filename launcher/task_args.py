"""A command made of tasks (`emma market parse|backfill`): its parser and the required TASK subparsers."""

from __future__ import annotations

from typing import Any


def add_task_group(sub: Any, name: str, *, help: str, description: str, dest: str) -> Any:
    """Add `name` to the COMMAND subparsers `sub`; return its TASK subparsers, one of which is required.

    The tasks' parsers are of the command parser's own class (launcher/cli.py's one-line usage errors)."""
    group = sub.add_parser(name, help=help, description=description)
    tasks = group.add_subparsers(dest=dest, metavar="TASK", parser_class=type(group))
    tasks.required = True
    return tasks
