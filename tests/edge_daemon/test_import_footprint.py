"""The edge daemon imports only what every site needs; heavy libraries load with the device that uses them.

Edge hardware is often a small board: pvlib (with pandas and scipy) costs over 100 MiB and python-can
with cantools about 19 MiB, yet only sites with a simulated inverter or a CAN bus use them. The
OpenTelemetry SDK (2.2 MiB) is the services' tracing; the daemon does not trace. These tests start a
fresh interpreter, because this test process has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pvlib", "pandas", "scipy", "h5py", "can", "cantools", "numpy", "opentelemetry")


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_starting_a_modbus_site_imports_no_simulator_or_can_library(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nid = "probe"\ntimezone = "UTC"\nlatitude = 0\nlongitude = 0\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
        '[[devices]]\nid = "meter"\ntype = "modbus"\nhost = "127.0.0.1"\nport = 1502\nunit_id = 1\n'
        '[[devices.registers]]\nname = "Power"\naddress = 0\ntype = "s16"\nunit = "W"\n'
    )
    loaded = modules_after(
        "from pathlib import Path\nimport edge_daemon.main, edge_daemon.uplink\n"
        "from edge_daemon.config import load_config\n"
        f"from edge_daemon.daemon import EdgeDaemon\nEdgeDaemon(load_config(Path({str(site)!r})))"
    )
    assert "edge_daemon" in loaded and "pymodbus" in loaded
    assert not loaded & set(HEAVY), f"a Modbus-only site imported {sorted(loaded & set(HEAVY))}"


def test_the_simulated_inverter_loads_pvlib_when_it_computes() -> None:
    code = "from edge_daemon.devices.pv import clear_sky_poa\nclear_sky_poa(40.0, -3.7, 30.0, 180.0, 0.0)"
    loaded = modules_after(code)
    assert "pvlib" in loaded


def test_the_can_driver_module_loads_python_can_only_when_a_device_is_configured() -> None:
    loaded = modules_after("from edge_daemon.drivers.canbus.device import load_dbc, parse_can_bms")
    assert "edge_daemon" in loaded
    assert not loaded & {"can", "cantools"}
