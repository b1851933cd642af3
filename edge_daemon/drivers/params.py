"""Config reading for drivers: errors name the device as well as the file and key.

A driver's table can be long (a register map has dozens of entries, possibly in a separate profile
file), so `devices[3].registers[17].type` alone sends the reader counting; every error from a driver's
parser therefore also says which device it is about.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from edge_daemon.errors import SiteConfigError
from edge_daemon.params import ParamReader

# The cloud's channel-name part (edge_daemon/uplink/wire.py) intersected with the store's segment rule.
CHANNEL_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class DeviceReader(ParamReader):
    def __init__(self, table: Mapping[str, Any], path: Path | str, prefix: str, device_id: str) -> None:
        super().__init__(table, path, prefix)
        self.device_id = device_id

    @classmethod
    def of(cls, r: ParamReader) -> DeviceReader:
        """A reader over the same device table as `r` (from config._devices), naming the device."""
        device_id = r.table.get("id")
        reader = cls(r.table, r.path, r.prefix, str(device_id))
        reader.mark_used("id", "type")
        # Our own finish() checks the keys (naming the device); the caller's must not object to them.
        r.mark_used(*r.table.keys())
        return reader

    def error(self, name: str, reason: str) -> SiteConfigError:
        return SiteConfigError(self.path, self.key(name), f"device {self.device_id!r}: {reason}")

    def at(self, key: str, reason: str) -> SiteConfigError:
        """An error at a full dotted key (for values inside arrays)."""
        return SiteConfigError(self.path, key, f"device {self.device_id!r}: {reason}")

    def sub(self, name: str, *, required: bool = False) -> DeviceReader:
        r = super().sub(name, required=required)
        return DeviceReader(r.table, r.path, r.prefix, self.device_id)

    def subs(self, name: str) -> list[ParamReader]:
        return [DeviceReader(r.table, r.path, r.prefix, self.device_id) for r in super().subs(name)]

    def device_subs(self, name: str) -> list[DeviceReader]:
        return [r for r in self.subs(name) if isinstance(r, DeviceReader)]

    def get_channel_name(self, name: str) -> str:
        value = self.get_str(name)
        if CHANNEL_NAME_RE.fullmatch(value) is None:
            raise self.error(name, f"{value!r} is not a channel name (letters, digits, _ and -, at most 63)")
        return value

    def get_choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get_str(name) if default is None else self.get_str(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def get_int_list(self, name: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        value = self._raw(name, list(default))
        if not isinstance(value, list):
            raise self.error(name, "expected an array of integers")
        out: list[int] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.at(f"{self.key(name)}[{i}]", f"expected an integer, got {item!r}")
            out.append(item)
        return tuple(out)

    def get_str_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._raw(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "expected an array of strings")
        return tuple(value)

    def get_scalar_table(self, name: str) -> dict[str, str | int | float | bool]:
        """A table of plain values (driver options passed through, e.g. python-can bus arguments)."""
        value = self._raw(name, {})
        if not isinstance(value, Mapping):
            raise self.error(name, "expected a table")
        out: dict[str, str | int | float | bool] = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float | bool) or (isinstance(v, float) and not math.isfinite(v)):
                raise self.at(f"{self.key(name)}.{k}", "expected a string, number or boolean")
            out[str(k)] = v
        return out

    def path_value(self, name: str) -> Path:
        """A file path, relative to the configuration file's directory."""
        p = Path(self.get_str(name)).expanduser()
        return p if p.is_absolute() else self.path.parent / p
