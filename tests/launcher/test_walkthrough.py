"""The README's "first five minutes", run word for word against a real `emma up`.

`emma up` runs as a subprocess (embedded PostgreSQL, services, gateway, two edge daemons as their own
processes); the README's shell block runs in bash with two substitutions only: the gateway address
(port 0 here, so tests never collide with a real 8080) and the state folder. It runs with a `date`
that, like macOS's, knows no GNU options, so the block stays portable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.cli_process import EmmaProcess

ROOT = Path(__file__).resolve().parents[2]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.strip().removeprefix("```sh").removesuffix("```").strip()


def wait_for_battery_limits(gateway: str, state: Path, timeout: float = 60) -> None:
    password = json.loads((state / "secrets.json").read_text())["demo_admin_password"]
    login = urllib.request.Request(
        f"{gateway}/v1/auth:login",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"email": "admin@emma.local", "password": password}).encode(),
    )
    with urllib.request.urlopen(login, timeout=10) as answer:
        token = json.load(answer)["accessToken"]
    url = f"{gateway}/v1/organizations/demo/sites/demo/edges/gw-1/devices/battery_1/latestValues"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            channels = {v["channel"].rsplit("/", 1)[1] for v in json.load(answer).get("values", [])}
        if {"MaxChargePower", "MaxDischargePower"} <= channels:
            return
        time.sleep(0.5)
    raise AssertionError("the simulated battery's limits never reached the cloud")


def bsd_date(folder: Path) -> Path:
    """A `date` that refuses GNU's options the way BSD date (macOS) does: `-d` is not relative time there."""
    folder.mkdir()
    shim = folder / "date"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do case "$a" in -d|--date*) echo "date: illegal option -- d" >&2; exit 1;; esac; done\n'
        'exec /bin/date "$@"\n'
    )
    shim.chmod(0o755)
    return folder


def test_the_readme_names_the_demo_sites_by_their_ids() -> None:
    # The sites' ids are what every URL uses; "Berlin" is where `demo` is, not its name.
    block = readme_block()
    for site_id in ("demo", "madrid"):
        assert f"`{site_id}`" in block
    assert "Berlin and Madrid" not in block


def test_the_readme_walkthrough_works_against_emma_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        "EMMA_STATE_DIR": str(state),
        "EMMA_GRPC_PORT": "0",
        "EMMA_GATEWAY_PORT": "0",
        "DATABASE_URL": "",
        "EMMA_ADMIN_PASSWORD": "",
    }
    proc = EmmaProcess("up", env=env)
    try:
        gateway = proc.wait_for("emma up: REST gateway on ", timeout=120).split(" on ", 1)[1].split(" ", 1)[0]
        proc.wait_for("ready; press Ctrl-C to stop")
        script = readme_block()
        assert script.startswith("GW=http://127.0.0.1:8080\n")
        script = script.replace("GW=http://127.0.0.1:8080", f"GW={gateway}", 1).replace(".emma/", f"{state}/")
        # As a person would: wait until the edges reported (commands are checked against the battery's
        # reported limits), here by polling the latest values, at most 60 s.
        wait_for_battery_limits(gateway, state)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "PATH": f"{bsd_date(tmp_path / 'bin')}:{os.environ['PATH']}"},
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout
    finally:
        assert proc.stop(signal.SIGINT) == 0, "\n".join(proc.lines)

    try:
        check_output(out)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"{exc!r}\n--- walkthrough output ---\n{out}") from exc


def check_output(out: str) -> None:
    # Sites: both demo sites, as proto3 JSON.
    first, second = out.split("\n", 2)[:2]
    sites = json.loads(first)
    assert [s["name"] for s in sites["sites"]] == ["organizations/demo/sites/demo", "organizations/demo/sites/madrid"]
    # Devices: what the demo edge reports, although none was registered through the API.
    devices = {d["name"].rsplit("/", 1)[1]: d for d in json.loads(second)["devices"]}
    assert {"battery_1", "pv_1", "grid_1"} <= set(devices)
    assert devices["battery_1"]["kind"] == "DEVICE_KIND_BATTERY"
    # Live values: SSE events with the battery's channels and their sample times.
    events = [json.loads(line[len("data: ") :]) for line in out.splitlines() if line.startswith("data: ")]
    live = [v for e in events if "values" in e for v in e["values"]]
    assert any(v["channel"].endswith("/devices/battery_1/channels/Soc") and "sampleTime" in v for v in live)
    # The command's watch: its states in order, ending EXECUTED with the applied value.
    watch = [e["command"] for e in events if "command" in e]
    states = [c["state"] for c in watch]
    order = ["COMMAND_STATE_QUEUED", "COMMAND_STATE_DELIVERED", "COMMAND_STATE_RECEIVED", "COMMAND_STATE_EXECUTED"]
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states), states
    assert states[-1] == "COMMAND_STATE_EXECUTED", states
    assert watch[-1]["appliedValue"] == -2000.0
    # History: one series of the state of charge with 5-minute points.
    history = json.loads(out.strip().splitlines()[-1])
    series = history["series"][0]
    assert series["channel"].endswith("/battery_1/channels/Soc")
    assert series["points"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:[0-5]\d:00Z", p["time"]) for p in series["points"])
