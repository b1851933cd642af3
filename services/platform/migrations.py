"""Versioned SQL migrations, applied in order under an advisory lock.

Files live in services/migrations as NNNN_description.sql. Each file runs in its own transaction
together with its row in schema_migrations, so a failing migration leaves nothing half-applied. The
advisory lock lets several replicas start at once: one applies, the others wait and then find
nothing to do. An applied file whose statements changed is an error: migrations are append-only.
The checksum covers the statements, not whole-line `--` comments, so a comment may be corrected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.errors import StartupError

Conn = asyncpg.Connection | PoolConnectionProxy

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant shared by every EMMA process: "EMMA" in ASCII.
ADVISORY_LOCK_KEY = 0x454D4D41
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMMENT_LINE = re.compile(r"^\s*--.*$\n?", re.MULTILINE)

# Ledgers written before checksums left comments out hold the SHA-256 of the whole file as released.
# They are recognised here and rewritten to the statements-only checksum on the next start.
_WHOLE_FILE_CHECKSUMS: dict[int, str] = {
    1: "5cf1d6cd99e0fb39767db5b0dd7cd71501db23497376d086cfcef7ab47101d1d",
    2: "c76cf8eae98bbebb611ed51915084a30d896dee5c7c195ed5ca163d69bc890e5",
    3: "ce079e5e355101a4750641ae6b67ab89c2567c18af9badf1aa86406880090d5a",
    4: "529b75b7fedcbbeb8fd361e2e14fae73c0c3d2ce2f2f254b24decc3c3a5ac9b0",
    5: "a256797e64606649612eff65ea4832eaa0bef5c2a42d879ddb3049958237854a",
    6: "4a7844115394470559df4af0d3aa7203b8d7feab902d6743c18d8cbc7bce225a",
}


class MigrationError(StartupError):
    """A migration file is malformed, was changed after it was applied, or failed to run."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the statements: whole-line comments are left out, they change nothing that runs."""
        return hashlib.sha256(_COMMENT_LINE.sub("", self.sql).encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or MIGRATIONS_DIR
    if not directory.is_dir():
        raise MigrationError(f"migrations folder {directory} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} is not named NNNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version:04d}")
        found[version] = Migration(version, path.stem, path.read_text())
    return [found[v] for v in sorted(found)]


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(
    conn: Conn, migrations: list[Migration] | None = None, settings: Mapping[str, str] | None = None
) -> list[str]:
    """Apply every pending migration; returns the names applied now.

    `settings` are choices a migration may read as `current_setting('emma.<name>', true)` (for
    example the telemetry store path); they last for this connection's session.
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    for name, value in (settings or {}).items():
        await conn.execute("SELECT set_config($1, $2, false)", f"emma.{name}", value)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT version, name, checksum FROM public.schema_migrations")
        done = {r["version"]: r for r in rows}
        for m in migrations:
            if m.version in done:
                stored = done[m.version]["checksum"]
                if stored == _WHOLE_FILE_CHECKSUMS.get(m.version):
                    await conn.execute(
                        "UPDATE public.schema_migrations SET checksum = $2 WHERE version = $1", m.version, m.checksum
                    )
                elif stored != m.checksum:
                    raise MigrationError(
                        f"migration {m.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                first = str(exc).splitlines()[0]
                raise MigrationError(f"migration {m.name} failed and was rolled back: {first}") from None
            applied_now.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    return applied_now


async def applied_versions(conn: Conn) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return [r["version"] for r in await conn.fetch("SELECT version FROM public.schema_migrations ORDER BY 1")]
