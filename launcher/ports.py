"""Checking the ports a command will listen on before it starts anything slow (PostgreSQL, migrations).

A clash found after the database started and the one-time admin password was printed leaves the user
with a half-started stack and a message to scroll for; found first, it is one line naming the flags.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from core.errors import ConfigError


class PortInUse(ConfigError):
    """A port the command needs is taken; the message names it and how to choose another."""


def check_free(ports: Sequence[tuple[str, str, int, str]]) -> None:
    """(what, host, port, how to change it) for each listening port; port 0 (any free port) is skipped.

    Binds the way the servers do (SO_REUSEADDR, so a port in TIME_WAIT counts as free) and closes again.
    """
    for what, host, port, how in ports:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise PortInUse(f"{what} cannot listen on {host}:{port}: {exc.strerror}; {how}") from None
                raise PortInUse(f"{what} port {host}:{port} is in use; {how}") from None
