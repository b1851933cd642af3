"""A child process stops when the process that started it dies, kill -9 included.

Two kinds of children need it. The processes `emma up` starts (the edge daemons, the REST gateway) run
in sessions of their own, so Ctrl-C in the terminal reaches only `emma up`, which stops them in order.
When `emma up` was killed instead, nothing told them: the edge daemons went on reconnecting to a cloud
that was gone, and the next `emma up` on the state folder started a second daemon on each site's outbox
and key, the clash the state folder's lock exists to prevent. Likewise the further gRPC workers of
`emma serve --workers N` (services/cloud.py) would go on holding the port without the first one, which
a supervisor restarts.

So the parent names itself in the child's environment (child_env) and the child asks the kernel
(Linux's PR_SET_PDEATHSIG) for SIGTERM, the signal of a normal stop, when its parent goes
(stop_with_parent, the first thing `emma`'s main does).
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
    parent) do not act on it. The kernel sends the signal when the *thread* that started the child
    ends: start such children from the thread that lives as long as the process (`emma up` and
    `emma serve` start them from their event loop, which runs in the main thread until they exit).
    """
    named = environ.pop(STOP_WITH_PARENT, "")
    if not named.isdigit():
        return
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # Checked after the request: a parent that died before it would never send the signal.
    if os.getppid() != int(named):
        raise ParentGone(f"emma: the process that started this one (pid {named}) has exited; stopping")
