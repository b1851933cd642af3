"""launcher/open_browser.py: `emma up` opens the dashboard when a graphical browser is there, else prints
the address with the demo login, and never fails.

Each case runs in a process of its own (Python's webbrowser reads DISPLAY, TERM and BROWSER once per
process) with PATH limited to an empty folder, so no browser of this machine is ever started: the
"browser" is BROWSER, a shell script that writes the address it was given to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import json, sys, threading
from pathlib import Path
from launcher.open_browser import open_dashboard
lines = []
opened = open_dashboard(sys.argv[1], "admin@emma.local", Path(sys.argv[2]), say=lines.append)
for thread in threading.enumerate():
    if thread.name == "open-browser":
        thread.join(20)
print(json.dumps({"opened": opened, "lines": lines}))
"""


def run(tmp_path: Path, env: dict[str, str], url: str = "http://0.0.0.0:8080") -> tuple[bool, str, str | None]:
    """(whether a browser was asked, what was printed, the address the browser got or None)."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    got = tmp_path / "browser-got.txt"
    got.unlink(missing_ok=True)
    base = {"PATH": str(empty), "HOME": str(tmp_path), "TERM": "xterm", "OUT_FILE": str(got)}
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, url, str(tmp_path / "state")],
        cwd=ROOT,
        env={**base, "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return bool(result["opened"]), "\n".join(result["lines"]), got.read_text().strip() if got.exists() else None


@pytest.fixture
def browser(tmp_path: Path) -> str:
    script = tmp_path / "browser.sh"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$1" > "$OUT_FILE"\n')
    script.chmod(0o755)
    return str(script)


def test_a_display_and_a_browser_open_the_dashboard_on_the_loopback_address(tmp_path: Path, browser: str) -> None:
    opened, said, got = run(tmp_path, {"DISPLAY": ":0", "BROWSER": browser})
    assert opened
    assert got == "http://127.0.0.1:8080/"  # the wildcard bind address is no address for a browser
    assert "dashboard at http://127.0.0.1:8080/ (log in as admin@emma.local" in said
    assert f"password in {tmp_path / 'state' / 'secrets.json'}" in said
    assert "EMMA_UP_OPEN_BROWSER=0 turns this off" in said


def test_without_a_display_the_address_is_printed_and_no_console_browser_starts(tmp_path: Path, browser: str) -> None:
    # TERM is set: webbrowser alone would pick a console browser, which would take over the terminal.
    opened, said, got = run(tmp_path, {"BROWSER": browser})
    assert not opened and got is None
    assert "dashboard at http://127.0.0.1:8080/ (log in as admin@emma.local" in said
    assert "no display here" in said


def test_emma_up_open_browser_off_only_prints(tmp_path: Path, browser: str) -> None:
    env = {"DISPLAY": ":0", "BROWSER": browser, "EMMA_UP_OPEN_BROWSER": "0", "EMMA_ADMIN_PASSWORD": "x" * 20}
    opened, said, got = run(tmp_path, env, url="http://192.0.2.7:9000")
    assert not opened and got is None
    assert said == (
        "emma up: dashboard at http://192.0.2.7:9000/ (log in as admin@emma.local, password in EMMA_ADMIN_PASSWORD)"
    )


def test_a_bad_switch_or_a_failing_or_missing_browser_never_fails(tmp_path: Path, browser: str) -> None:
    opened, said, got = run(tmp_path, {"DISPLAY": ":0", "BROWSER": browser, "EMMA_UP_OPEN_BROWSER": "maybe"})
    assert not opened and got is None
    assert "not opening a browser: EMMA_UP_OPEN_BROWSER='maybe' is not a boolean" in said

    failing = tmp_path / "failing.sh"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    opened, said, _ = run(tmp_path, {"DISPLAY": ":0", "BROWSER": str(failing)})
    assert opened  # asked; the command's failure is reported, not raised
    assert "the browser did not open http://127.0.0.1:8080/; open it by hand" in said

    opened, said, _ = run(tmp_path, {"WAYLAND_DISPLAY": "wayland-0"})  # a display but no browser on PATH
    assert not opened
    assert "no graphical web browser found" in said
