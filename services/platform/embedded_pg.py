"""The embedded PostgreSQL of local runs (`emma up`, the tests), from the pgserver wheel.

Its data lives under the state folder and is reused across runs; it listens on a Unix socket only, so
it never clashes with another PostgreSQL on the machine.

Every pgserver call runs in a short-lived child Python process. When the caller is root, pgserver
starts PostgreSQL as an unprivileged user through subprocess(user=...), and switching user in a
child forked from a multi-threaded process (gRPC's threads) can crash the child; a fresh,
single-threaded helper process avoids that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.errors import StartupError

DATABASE = "emma"

# Server settings for write-heavy ingest (ALTER SYSTEM, so they persist in the data folder). Only
# durability-neutral settings: fsync, synchronous_commit and full_page_writes keep their defaults.
# - shared_buffers 128 MB -> 512 MB: today's sample partition, its index and the latest/ledger
#   tables stay in memory instead of backends evicting dirty pages themselves (needs a restart,
#   done once when the setting first changes).
# - wal_buffers 16 MB: a commit group's WAL fits without waiting for WAL writes.
# - max_wal_size 4 GB, checkpoint_timeout 15 min: fewer checkpoints, so fewer full-page images in
#   the WAL after each one; checkpoint_completion_target 0.9 spreads a checkpoint's writes.
# wal_compression is left off: this build has no lz4, pglz costs CPU on a small machine, and with
# rare checkpoints there are few full-page images to compress.
# The 1,000-edge benchmark (docs/performance.md) shows what they change.
SERVER_SETTINGS: dict[str, str] = {
    "shared_buffers": "512MB",
    "wal_buffers": "16MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
}

_HELPER = r"""
import fcntl, json, logging, sys, warnings
logging.getLogger("pgserver").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")
from pathlib import Path
action, pgdata = sys.argv[1], Path(sys.argv[2])
# One helper at a time per data folder, held until this one exits (see the comment above _helper).
lock = open(str(pgdata) + ".lock", "a")
fcntl.flock(lock, fcntl.LOCK_EX)
if action == "start":
    import os
    from pgserver.postgres_server import get_server
    # Asked under the lock: whether a server was already up decides who may stop it.
    try:
        os.kill(int((pgdata / "postmaster.pid").read_text().splitlines()[0]), 0)
        was_running = True
    except (OSError, ValueError, IndexError):
        was_running = False
    server = get_server(pgdata, cleanup_mode=None)  # keeps running after this helper exits
    database = sys.argv[3]
    if database and "(1 row)" not in server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';"):
        server.psql(f'CREATE DATABASE "{database}";')
    settings = json.loads(sys.argv[4])
    for name, value in settings.items():
        server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
    server.psql("SELECT pg_reload_conf();")
    # The effective line of each setting in the files; "not applied" means it waits for a restart.
    pending = server.psql(
        "SELECT 'restart' FROM (SELECT DISTINCT ON (name) applied FROM pg_file_settings"
        " ORDER BY name, seqno DESC) f WHERE NOT applied;"
    )
    if "restart" in pending:
        from pgserver._commands import pg_ctl
        pg_ctl(
            ["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"],
            pgdata=pgdata,
            user=server.system_user or None,
            timeout=120,
        )
    print(json.dumps({"uri": server.get_uri("postgres"), "user": server.system_user, "started": not was_running}))
else:
    from pgserver._commands import pg_ctl
    user = sys.argv[3] or None
    pg_ctl(["-w", "-m", "fast", action], pgdata=pgdata, user=user, timeout=120)
"""


# The helpers of one data folder take turns on the file "<pgdata>.lock" (beside the folder: initdb wants
# the folder itself empty). A helper outlives its caller: when `emma up` is killed (kill -9) while its
# helper restarts the server to apply SERVER_SETTINGS, the helper goes on, and the next `emma up`'s helper
# found that server shutting down and failed ("checkpoint starting: shutdown immediate" in the log). With
# the lock it waits until the restart is over and then attaches to the running server.


def _helper(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _HELPER, *args], capture_output=True, text=True, timeout=180, check=False
    )
    if proc.returncode != 0:
        raise StartupError(f"embedded PostgreSQL {args[0]} failed: {failure_reason(proc.stderr or proc.stdout)}")
    return proc.stdout


# What PostgreSQL's own programs say when they fail, in the helper's output (pgserver logs it).
_TOOL_LINE = ("pg_ctl: ", "initdb: ", "postgres: ", "FATAL: ")


def failure_reason(output: str) -> str:
    """The line of a failed helper's output that says why: the last one PostgreSQL's programs wrote
    ("pg_ctl: could not access directory ...: Permission denied"), else the last line (pgserver's
    CalledProcessError, which says only that pg_ctl returned 1)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(_TOOL_LINE)]
    return said[-1] if said else (lines[-1] if lines else "no output")


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    admin_uri: str
    system_user: str
    # False when the server was already running (another process started it): then stop() leaves it
    # alone, because only the process that started a server may stop it.
    started_here: bool = True

    def uri(self, database: str = DATABASE) -> str:
        base, _, query = self.admin_uri.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")

    def restart(self) -> None:
        """Restart the server process (tests use it to prove services survive a database restart)."""
        _helper("restart", str(self.pgdata), self.system_user)

    def stop(self) -> None:
        if self.started_here and (self.pgdata / "postmaster.pid").exists():
            _helper("stop", str(self.pgdata), self.system_user)


def start_embedded_postgres(state_dir: Path, database: str = DATABASE) -> EmbeddedPostgres:
    """Start (or attach to) the PostgreSQL under `state_dir`/pgdata and make sure `database` exists."""
    pgdata = state_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        info = json.loads(_helper("start", str(pgdata), database, json.dumps(SERVER_SETTINGS)).strip().splitlines()[-1])
    except StartupError as exc:
        log = pgdata / "log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise StartupError(f"{exc}" + (f" ({tail[0]})" if tail else "") + f"; data in {pgdata}") from None
    return EmbeddedPostgres(
        pgdata=pgdata, admin_uri=info["uri"], system_user=info["user"] or "", started_here=info["started"]
    )
