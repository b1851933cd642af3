"""A failing embedded-PostgreSQL step says why in its one line: PostgreSQL's own reason, not pgserver's
"returned non-zero exit status 1" (which hid a data folder the server's user could no longer reach)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from services.errors import StartupError
from services.platform.embedded_pg import EmbeddedPostgres, failure_reason, start_embedded_postgres
from tests.support.pg import SessionPostgres


def test_a_real_failure_names_pg_ctls_reason(tmp_path: Path, postgres: SessionPostgres) -> None:
    # As root pgserver runs PostgreSQL's programs as its own user, which exists once an embedded
    # server has started (the session's `postgres`, when DATABASE_URL is unset).
    user = "pgserver" if os.geteuid() == 0 else ""
    missing = tmp_path / "nowhere"
    with pytest.raises(StartupError) as failed:
        EmbeddedPostgres(pgdata=missing, admin_uri="", system_user=user).restart()
    text = str(failed.value)
    assert text.startswith("embedded PostgreSQL restart failed: pg_ctl: "), text
    assert str(missing) in text and "\n" not in text, text


def test_the_reason_is_postgresqls_last_line_else_the_last_line() -> None:
    pgserver_log = """Failed postgres command ... with kwargs: `{'user': 'pgserver', 'timeout': 120}`:
error:
Command '[...pg_ctl, -D, /s/pgdata, -w, -m, fast, stop]' returned non-zero exit status 1.
stderr:
pg_ctl: could not access directory "/s/pgdata": Permission denied

---
Traceback (most recent call last):
subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.
"""
    assert failure_reason(pgserver_log) == 'pg_ctl: could not access directory "/s/pgdata": Permission denied'
    assert failure_reason("Traceback ...\nOSError: no space left\n\n") == "OSError: no space left"
    assert failure_reason("") == "no output"


def test_starts_of_one_data_folder_take_turns_and_only_the_first_may_stop_the_server(tmp_path: Path) -> None:
    # A killed `emma up` leaves its helper running (it may be restarting the server to apply settings);
    # the next start must wait for it instead of finding the server half shut down. Here the test holds
    # the helpers' lock as that orphan would, while two starts on a fresh folder wait behind it.
    state = tmp_path / "state"
    state.mkdir()
    started: list[EmbeddedPostgres] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            started.append(start_embedded_postgres(state))
        except BaseException as exc:
            errors.append(exc)

    with open(state / "pgdata.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        threads = [threading.Thread(target=start) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert not (state / "pgdata" / "PG_VERSION").exists(), "a start went ahead while the lock was held"
        assert started == [] and errors == []
    for thread in threads:
        thread.join(timeout=170)
    try:
        assert errors == [], errors
        assert len(started) == 2
        assert sorted(s.started_here for s in started) == [False, True]
        assert started[0].admin_uri == started[1].admin_uri
    finally:
        for server in started:
            server.stop()
    assert not (state / "pgdata" / "postmaster.pid").exists()
