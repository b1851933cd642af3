"""Processes `emma up` starts (the edge daemons, the REST gateway) stop when it dies, kill -9 included.

They run in sessions of their own, so Ctrl-C in the terminal reaches only `emma up`, which stops them in
order. When `emma up` is killed instead, nothing told them: the edge daemons went on reconnecting to a
cloud that was gone, and the next `emma up` on the state folder started a second daemon on each site's
outbox and key, the clash the state folder's lock exists to prevent. So `emma up` names itself in the
child's environment and the child asks the kernel (Linux's PR_SET_PDEATHSIG) for SIGTERM, the signal
of a normal stop, when its parent goes. The further gRPC workers of `--workers N` watch their parent
in their own way (services/platform/server.py, `parent_pid`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping

STOP_WITH_PARENT = "EMMA_STOP_WITH_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ParentGone(SystemExit):
    """The process that started this one exited before this one could ask to follow it."""


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a child that must stop when this process dies."""
    return {**env, STOP_WITH_PARENT: str(os.getpid())}


def stop_with_parent(environ: MutableMapping[str, str] = os.environ) -> None:
    """In a child started with child_env: SIGTERM when the parent dies; ParentGone if it already has.

    The variable is taken out of the environment, so the child's own children (which have another
    parent) do not act on it. The kernel sends the signal when the thread that started the child ends:
    `emma up` starts its children from its event loop, which runs in its main thread until it exits.
    """
    named = environ.pop(STOP_WITH_PARENT, "")
    if not named.isdigit():
        return
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # Checked after the request: a parent that died before it would never send the signal.
    if os.getppid() != int(named):
        raise ParentGone(f"emma: the process that started this one (pid {named}) has exited; stopping")
