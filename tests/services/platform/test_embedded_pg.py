"""A failing embedded-PostgreSQL step says why in its one line: PostgreSQL's own reason, not pgserver's
"returned non-zero exit status 1" (which hid a data folder the server's user could no longer reach)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.errors import StartupError
from services.platform.embedded_pg import EmbeddedPostgres, failure_reason
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
