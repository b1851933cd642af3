"""One `emma up` per state folder: an exclusive lock on <state>/emma-up.lock, held for the process's life.

Two stacks on one state folder would share one embedded PostgreSQL and run the same demo edges with the
same keys and outboxes, knocking each other off their streams. The lock is an flock(2), so the kernel
drops it when the holder exits, kill -9 included: a stale lock file never blocks the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import ConfigError
from edge_daemon.private_files import private_dir, restrict_dir

LOCK_NAME = "emma-up.lock"


class StateFolderInUse(ConfigError):
    """Another process holds the state folder; the message names it and the ways out."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def hold_state_folder(state_dir: Path) -> Iterator[None]:
    """Hold the folder's lock until the block ends; StateFolderInUse at once when it is taken.

    The folder holds the database, the secrets, the edges' keys and outboxes: it is made 0700 (also
    when an earlier release created it with the umask's 0755), but only once the lock is ours: a
    refused second start must not change the folder under the running stack, whose PostgreSQL may run
    as another user that passes through it (launcher.up.narrow_state_folder)."""
    private_dir(state_dir)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateFolderInUse(
                f"the state folder {state_dir} is in use by a running emma up ({_holder(path)}); stop that one, "
                "or give this one its own folder with --state-dir or EMMA_STATE_DIR"
            ) from None
        restrict_dir(state_dir)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
