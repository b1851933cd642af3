"""The embedded PostgreSQL of local runs (`emma up`, the tests), from the pgserver wheel.

Its data lives under the state folder and is reused across runs; it listens on a Unix socket only, so
it never clashes with another PostgreSQL on the machine.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import StartupError

DATABASE = "emma"


@dataclass
class EmbeddedPostgres:
    handle: Any  # pgserver.PostgresServer (untyped)
    pgdata: Path

    def uri(self, database: str = DATABASE) -> str:
        return str(self.handle.get_uri(database))

    def create_database(self, name: str) -> None:
        exists = self.handle.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self.handle.psql(f'CREATE DATABASE "{name}";')

    def stop(self) -> None:
        self.handle.cleanup()


def start_embedded_postgres(state_dir: Path, database: str = DATABASE) -> EmbeddedPostgres:
    """Start (or attach to) the PostgreSQL under `state_dir`/pgdata; blocking, takes about a second."""
    # pgserver logs every command it runs at INFO and platformdirs warns about XDG_RUNTIME_DIR on
    # servers; neither helps a person starting EMMA.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from pgserver.postgres_server import get_server  # imported here: only local runs need it

    pgdata = state_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        handle = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain subprocess/OS errors
        log = pgdata / "log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise StartupError(
            f"embedded PostgreSQL in {pgdata} did not start: {exc}" + (f" ({tail[0]})" if tail else "")
        ) from None
    pg = EmbeddedPostgres(handle=handle, pgdata=pgdata)
    pg.create_database(database)
    return pg
