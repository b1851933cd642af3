"""Site configuration: one TOML file -> typed dataclasses, validated completely at start.

Every problem is a SiteConfigError naming the file, the dotted key (`devices[2].capacity_wh`) and the
reason. Unknown keys are errors too, so a typo cannot silently fall back to a default. Relative paths
(outbox, key file) are relative to the configuration file's directory, so a site directory can move.

Controllers run in the order they are listed: later entries have higher priority because the last
write wins. `manual_override`, when present, must therefore be the last entry.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_daemon import device_types
from edge_daemon.controllers import factory as controller_factory
from edge_daemon.controllers.manual_override import ManualOverride
from edge_daemon.controllers.schedule_follower import ScheduleFollower
from edge_daemon.cycle import MAX_PERIOD_S, MIN_PERIOD_S
from edge_daemon.devices.base import validate_device_id
from edge_daemon.devices.site import SiteDevices
from edge_daemon.drivers import factory as drivers
from edge_daemon.errors import ChannelError, SiteConfigError
from edge_daemon.params import ParamReader

DEFAULT_OUTBOX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The cloud's resource-name rules (services/names.py): organizations/{org}/sites/{site}/edges/{edge}.
_NAME_ID = r"[a-z][a-z0-9-]{0,62}"
EDGE_NAME_RE = re.compile(rf"organizations/{_NAME_ID}/sites/{_NAME_ID}/edges/{_NAME_ID}")
# The cloud closes connections that ping more often than every 10 s (GOAWAY too_many_pings).
MIN_KEEPALIVE_S = 10.0


@dataclass(frozen=True, slots=True)
class SiteInfo:
    site_id: str
    name: str
    timezone: str
    latitude: float
    longitude: float

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class CycleConfig:
    period_s: float = 1.0


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """[cloud]: where and as whom the uplink connects, and how it keeps the stream alive.

    `edge` is the edge's resource name, checked by the cloud against the API key in `key_file`.
    Reconnects wait a random time in 0..min(reconnect_max_s, reconnect_min_s * 2**attempt) (full
    jitter); a refused key (UNAUTHENTICATED) waits `auth_retry_s` instead: retrying faster cannot fix
    it, but an operator may replace the key file, which is re-read before every attempt.
    """

    endpoint: str
    key_file: Path
    edge: str
    tls: bool = True
    ca_file: Path | None = None
    keepalive_time_s: float = 15.0
    keepalive_timeout_s: float = 10.0
    connect_timeout_s: float = 20.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    auth_retry_s: float = 60.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    path: Path
    max_bytes: int = DEFAULT_OUTBOX_BYTES


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    batch_interval_s: float = 5.0
    # Samples waiting in memory for the uplink to turn into batches; beyond this the oldest are dropped
    # and counted, so a stalled uplink cannot exhaust the edge's memory.
    max_pending_samples: int = 200_000
    # Points per TelemetryBatch; must not exceed the cloud's limit (Welcome.max_batch_points, 10,000 by
    # default), because batches are built, numbered and stored before the cloud is ever reached.
    max_batch_points: int = 5_000


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    device_id: str
    type: str
    params: device_types.DeviceParams


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    type: str
    params: controller_factory.ControllerParams


@dataclass(frozen=True, slots=True)
class SiteConfig:
    source: Path
    site: SiteInfo
    cycle: CycleConfig
    cloud: CloudConfig | None
    outbox: OutboxConfig
    telemetry: TelemetryConfig
    devices: tuple[DeviceConfig, ...]
    controllers: tuple[ControllerConfig, ...]

    def site_context(self) -> device_types.SiteContext:
        return device_types.SiteContext(self.site.latitude, self.site.longitude, self.site.tz)


def load_config(path: Path | str) -> SiteConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SiteConfigError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(path, "", f"invalid TOML: {exc}") from exc
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path | str) -> SiteConfig:
    """Validate an already parsed TOML document. `path` names it in errors and anchors relative paths."""
    path = Path(path)
    base = path.parent
    root = ParamReader(data, path, "")
    site = _site(root.sub("site", required=True))
    cycle_r = root.sub("cycle")
    cycle = CycleConfig(cycle_r.get_float("period_s", 1.0, minimum=MIN_PERIOD_S, maximum=MAX_PERIOD_S))
    cycle_r.finish()
    cloud = _cloud(root.sub("cloud"), base) if root.has("cloud") else None
    root.mark_used("cloud")
    outbox_r = root.sub("outbox")
    outbox = OutboxConfig(
        path=_path(base, outbox_r.get_str("path", "outbox.sqlite")),
        max_bytes=outbox_r.get_int("max_bytes", DEFAULT_OUTBOX_BYTES, minimum=64 * 1024),
    )
    outbox_r.finish()
    tel_r = root.sub("telemetry")
    telemetry = TelemetryConfig(
        batch_interval_s=tel_r.get_float("batch_interval_s", 5.0, minimum=0.1, maximum=3600),
        max_pending_samples=tel_r.get_int("max_pending_samples", 200_000, minimum=1000),
        max_batch_points=tel_r.get_int("max_batch_points", 5_000, minimum=1, maximum=1_000_000),
    )
    tel_r.finish()
    devices = _devices(root)
    drivers.check_shared_lines(
        str(path),
        [(i, d.device_id, d.params) for i, d in enumerate(devices) if isinstance(d.params, drivers.DriverParams)],
    )
    controllers = _controllers(root)
    root.finish()
    config = SiteConfig(path, site, cycle, cloud, outbox, telemetry, devices, controllers)
    _check_references(config, root)
    return config


def _site(r: ParamReader) -> SiteInfo:
    site_id = r.get_str("id")
    try:
        validate_device_id(site_id)
    except ChannelError:
        raise r.error("id", "letters, digits, _ and -, starting alphanumeric") from None
    tz = r.get_str("timezone")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.error("timezone", f"unknown IANA time zone {tz!r}") from None
    info = SiteInfo(
        site_id=site_id,
        name=r.get_str("name", site_id),
        timezone=tz,
        latitude=r.get_float("latitude", minimum=-90, maximum=90),
        longitude=r.get_float("longitude", minimum=-180, maximum=180),
    )
    r.finish()
    return info


def _cloud(r: ParamReader, base: Path) -> CloudConfig:
    endpoint = r.get_str("endpoint")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise r.error("endpoint", f"expected host:port, got {endpoint!r}")
    edge = r.get_str("edge")
    if EDGE_NAME_RE.fullmatch(edge) is None:
        raise r.error(
            "edge",
            f"expected organizations/{{org}}/sites/{{site}}/edges/{{edge}} (lower-case ids), got {edge!r}",
        )
    tls = r.get_bool("tls", True)
    ca_file = r.get_optional_str("ca_file")
    if ca_file is not None and not tls:
        raise r.error("ca_file", "only meaningful with tls = true")
    reconnect_min_s = r.get_float("reconnect_min_s", 0.5, minimum=0, exclusive_min=True, maximum=3600)
    reconnect_max_s = r.get_float("reconnect_max_s", 30.0, minimum=reconnect_min_s, maximum=3600)
    cloud = CloudConfig(
        endpoint=endpoint,
        key_file=_path(base, r.get_str("key_file")),
        edge=edge,
        tls=tls,
        ca_file=None if ca_file is None else _path(base, ca_file),
        keepalive_time_s=r.get_float("keepalive_time_s", 15.0, minimum=MIN_KEEPALIVE_S, maximum=3600),
        keepalive_timeout_s=r.get_float("keepalive_timeout_s", 10.0, minimum=1, maximum=600),
        connect_timeout_s=r.get_float("connect_timeout_s", 20.0, minimum=0, exclusive_min=True, maximum=600),
        reconnect_min_s=reconnect_min_s,
        reconnect_max_s=reconnect_max_s,
        auth_retry_s=r.get_float("auth_retry_s", 60.0, minimum=0, exclusive_min=True, maximum=86_400),
        max_message_bytes=r.get_int("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, minimum=64 * 1024, maximum=1 << 30),
    )
    r.finish()
    return cloud


def _devices(root: ParamReader) -> tuple[DeviceConfig, ...]:
    readers = root.subs("devices")
    if not readers:
        raise root.error("devices", "at least one device is required")
    seen: set[str] = set()
    out: list[DeviceConfig] = []
    for r in readers:
        device_id = r.get_str("id")
        try:
            validate_device_id(device_id)
        except ChannelError:
            raise r.error("id", "letters, digits, _ and -, starting alphanumeric") from None
        if device_id in seen:
            raise r.error("id", f"duplicate device id {device_id!r}")
        seen.add(device_id)
        kind = r.get_str("type")
        parse = device_types.PARSERS.get(kind)
        if parse is None:
            raise r.error("type", f"unknown device type {kind!r} (known: {', '.join(sorted(device_types.PARSERS))})")
        params = parse(r)
        r.finish()
        out.append(DeviceConfig(device_id, kind, params))
    return tuple(out)


def _controllers(root: ParamReader) -> tuple[ControllerConfig, ...]:
    readers = root.subs("controllers")
    out: list[ControllerConfig] = []
    for i, r in enumerate(readers):
        kind = r.get_str("type")
        parse = controller_factory.PARSERS.get(kind)
        if parse is None:
            known = ", ".join(sorted(controller_factory.PARSERS))
            raise r.error("type", f"unknown controller type {kind!r} (known: {known})")
        if kind in (ManualOverride.type_name, ScheduleFollower.type_name) and any(c.type == kind for c in out):
            raise r.error("type", f"only one {kind} controller is allowed")
        if kind == ManualOverride.type_name and i != len(readers) - 1:
            raise r.error(
                "type",
                "manual_override must be the last controller (highest priority) so its "
                "acks report what is actually applied",
            )
        params = parse(r)
        r.finish()
        out.append(ControllerConfig(kind, params))
    return tuple(out)


def _check_references(config: SiteConfig, root: ParamReader) -> None:
    devices = SiteDevices(
        device_types.build_devices([(d.device_id, d.params) for d in config.devices], config.site_context())
    )
    for i, controller in enumerate(config.controllers):
        for param, channel, writable in controller_factory.references(controller.params):
            found = devices.spec(channel)
            key = f"controllers[{i}].{param}"
            if found is None:
                raise SiteConfigError(root.path, key, f"device has no channel {channel}")
            if writable and not found[1].writable:
                raise SiteConfigError(root.path, key, f"{channel} is not writable")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def demo_site_dict(
    *,
    period_s: float = 1.0,
    latitude: float = 52.52,
    longitude: float = 13.405,
    timezone: str = "Europe/Berlin",
    outbox_path: str = "outbox.sqlite",
) -> dict[str, Any]:
    """The demo site as a TOML-shaped document (also written out as examples/site.toml)."""
    return {
        "site": {
            "id": "demo",
            "name": "Demo site",
            "timezone": timezone,
            "latitude": latitude,
            "longitude": longitude,
        },
        "cycle": {"period_s": period_s},
        "outbox": {"path": outbox_path, "max_bytes": 64 * 1024 * 1024},
        "telemetry": {"batch_interval_s": 5.0},
        "devices": [
            {
                "id": "battery_1",
                "type": "sim_battery",
                "capacity_wh": 10_000,
                "max_charge_w": 5_000,
                "max_discharge_w": 5_000,
                "efficiency": 0.92,
                "min_soc": 10,
                "max_soc": 95,
                "initial_soc": 50,
            },
            {
                "id": "pv_1",
                "type": "sim_pv",
                "peak_power_w": 8_000,
                "cloudiness": 0.2,
                "tilt_deg": 30,
                "azimuth_deg": 180,
            },
            {"id": "load_1", "type": "sim_load", "mean_power_w": 600, "noise_w": 40, "seed": 1},
            {
                "id": "ev_1",
                "type": "sim_ev_charger",
                "max_power_w": 11_000,
                "min_power_w": 1_380,
                "arrival_hour": 18,
                "departure_hour": 7,
                "session_energy_wh": 20_000,
            },
            {"id": "grid_1", "type": "sim_grid_meter"},
        ],
        "controllers": [
            {"type": "self_consumption", "battery": "battery_1", "grid_meter": "grid_1"},
            {"type": "schedule_follower", "battery": "battery_1", "safe_mode": "defer"},
            {"type": "manual_override", "default_hold_s": 900},
        ],
    }


def demo_site_config(
    data_dir: Path | str,
    *,
    period_s: float = 1.0,
    cloud: CloudConfig | None = None,
    latitude: float = 52.52,
    longitude: float = 13.405,
    timezone: str = "Europe/Berlin",
) -> SiteConfig:
    """The ready-made site of `emma edge --simulate`: battery, PV, load, EV charger and grid meter;
    self-consumption, schedule follower (deferring to self-consumption when no schedule is valid) and
    manual override. The outbox lives in `data_dir`."""
    data_dir = Path(data_dir)
    doc = demo_site_dict(period_s=period_s, latitude=latitude, longitude=longitude, timezone=timezone)
    config = parse_config(doc, data_dir / "demo-site.toml")
    if cloud is None:
        return config
    return SiteConfig(
        config.source,
        config.site,
        config.cycle,
        cloud,
        config.outbox,
        config.telemetry,
        config.devices,
        config.controllers,
    )
