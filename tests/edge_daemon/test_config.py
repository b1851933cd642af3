"""Site configuration: the sample file and demo load; every bad config names file, key and reason."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from edge_daemon.config import demo_site_config, demo_site_dict, load_config, parse_config
from edge_daemon.controllers.schedule_follower import SafeMode, ScheduleFollowerParams
from edge_daemon.devices.battery import BatteryParams
from edge_daemon.errors import EdgeError, SiteConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "edge_daemon" / "examples" / "site.toml"


def test_sample_file_loads_and_matches_the_demo_site() -> None:
    config = load_config(EXAMPLE)
    assert config.site.site_id == "demo"
    assert config.site.tz.key == "Europe/Berlin"
    assert [d.type for d in config.devices] == [
        "sim_battery",
        "sim_pv",
        "sim_load",
        "sim_ev_charger",
        "sim_grid_meter",
    ]
    assert [c.type for c in config.controllers] == [
        "self_consumption",
        "schedule_follower",
        "manual_override",
    ]
    battery = config.devices[0].params
    assert isinstance(battery, BatteryParams) and battery.capacity_wh == 10_000 and battery.efficiency == 0.92
    follower = config.controllers[1].params
    assert isinstance(follower, ScheduleFollowerParams) and follower.safe_mode is SafeMode.DEFER
    assert config.outbox.path == EXAMPLE.parent / "../../.emma/edge-example/outbox.sqlite"  # relative to the file
    assert config.cloud is None
    assert config == parse_config(demo_site_dict(outbox_path="../../.emma/edge-example/outbox.sqlite"), EXAMPLE)


def test_demo_site_config_puts_the_outbox_in_the_data_dir(tmp_path: Path) -> None:
    config = demo_site_config(tmp_path / "data", period_s=0.1)
    assert config.outbox.path == tmp_path / "data" / "outbox.sqlite"
    assert config.cycle.period_s == 0.1


def test_cloud_section_and_relative_key_file(tmp_path: Path) -> None:
    doc = demo_site_dict()
    doc["cloud"] = {
        "endpoint": "cloud.example:443",
        "key_file": "keys/edge.key",
        "edge": "organizations/acme/sites/demo/edges/gw-1",
        "tls": True,
    }
    config = parse_config(doc, tmp_path / "site.toml")
    assert config.cloud is not None
    assert config.cloud.endpoint == "cloud.example:443"
    assert config.cloud.key_file == tmp_path / "keys" / "edge.key"


def _with(change: dict[str, Any]) -> dict[str, Any]:
    doc = demo_site_dict()
    for dotted, value in change.items():
        target: Any = doc
        parts = dotted.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return doc


_DELETE = object()

BAD = [
    ({"devices[0].capacity_wh": -5}, "devices[0].capacity_wh", "greater than 0"),
    ({"devices[0].capacity_wh": "big"}, "devices[0].capacity_wh", "expected a number"),
    ({"devices[0].capacity_whh": 5}, "devices[0].capacity_whh", "unknown key"),
    ({"devices[0].min_soc": 96}, "devices[0].min_soc", "below max_soc"),
    ({"devices[1].type": "sim_wind"}, "devices[1].type", "unknown device type 'sim_wind'"),
    ({"devices[2].profile": [1.0, 2.0]}, "devices[2].profile", "24 hourly values"),
    ({"devices[3].id": "battery_1"}, "devices[3].id", "duplicate device id"),
    ({"devices[0].id": "bad id"}, "devices[0].id", "letters, digits"),
    ({"devices[2].mean_power_w": _DELETE}, "devices[2].mean_power_w", "required key is missing"),
    ({"site.timezone": "Mars/Olympus"}, "site.timezone", "unknown IANA time zone"),
    ({"site.latitude": 91}, "site.latitude", "at most 90"),
    ({"cycle.period_s": 0.05}, "cycle.period_s", "at least 0.1"),
    ({"outbox.max_bytes": 10}, "outbox.max_bytes", "at least 65536"),
    ({"telemetry.batch_interval_s": True}, "telemetry.batch_interval_s", "expected a number"),
    ({"controllers[0].battery": "pv_1"}, "controllers[0].battery", "no channel pv_1/SetActivePower"),
    ({"controllers[0].grid_meter": "nope"}, "controllers[0].grid_meter", "no channel nope/ActivePower"),
    ({"controllers[1].safe_mode": "panic"}, "controllers[1].safe_mode", "unknown safe mode 'panic'"),
    ({"controllers[1].type": "manual_override"}, "controllers[1].type", "must be the last controller"),
    ({"controllers[2].type": "fuzzy"}, "controllers[2].type", "unknown controller type 'fuzzy'"),
    ({"devices": []}, "devices", "at least one device"),
    ({"sight": {}}, "sight", "unknown key"),
]


@pytest.mark.parametrize(("change", "key", "reason"), BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, change: dict[str, Any], key: str, reason: str) -> None:
    path = tmp_path / "site.toml"
    with pytest.raises(SiteConfigError) as info:
        parse_config(_with(change), path)
    err = info.value
    assert err.path == str(path)
    assert err.key == key
    assert reason in err.reason
    assert str(err).startswith(f"{path}: {key}: ")
    assert isinstance(err, EdgeError)
    assert isinstance(err, ConfigError)  # `except ConfigError` catches a bad setting in any package


def test_cloud_endpoint_without_port(tmp_path: Path) -> None:
    doc = demo_site_dict()
    doc["cloud"] = {"endpoint": "cloud.example", "key_file": "k"}
    with pytest.raises(SiteConfigError, match=r"cloud\.endpoint: expected host:port"):
        parse_config(doc, tmp_path / "site.toml")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(SiteConfigError, match="cannot read") as info:
        load_config(missing)
    assert info.value.path == str(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nid = 1\n")
    with pytest.raises(SiteConfigError, match="invalid TOML") as info:
        load_config(broken)
    assert info.value.path == str(broken)


def test_a_bad_key_in_a_real_file(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("max_charge_w = 5000", "max_charge_w = -1")
    path = tmp_path / "site.toml"
    path.write_text(text)
    assert tomllib.loads(text)["devices"][0]["max_charge_w"] == -1
    with pytest.raises(SiteConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: devices[0].max_charge_w: must be at least 0, got -1"
