"""Typed reading of one TOML table, with errors that name the file and the dotted key.

Every getter records the key it read, so `finish()` can reject the keys nobody asked for: a misspelt
`capacity_whh` must fail at start, not silently fall back to a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from edge_daemon.errors import SiteConfigError


class _Required:
    pass


REQUIRED: Final = _Required()


class ParamReader:
    def __init__(self, table: Mapping[str, Any], path: Path | str, prefix: str) -> None:
        self.table = table
        self.path = Path(path)
        self.prefix = prefix
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> SiteConfigError:
        return SiteConfigError(self.path, self.key(name), reason)

    def has(self, name: str) -> bool:
        return name in self.table

    def _raw(self, name: str, default: object) -> object:
        self._used.add(name)
        if name in self.table:
            return self.table[name]
        if isinstance(default, _Required):
            raise self.error(name, "required key is missing")
        return default

    def get_str(self, name: str, default: str | _Required = REQUIRED) -> str:
        value = self._raw(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_kind(value)}")
        return value

    def get_optional_str(self, name: str) -> str | None:
        if name not in self.table:
            self._used.add(name)
            return None
        return self.get_str(name)

    def get_bool(self, name: str, default: bool | _Required = REQUIRED) -> bool:
        value = self._raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_kind(value)}")
        return value

    def get_int(
        self,
        name: str,
        default: int | _Required = REQUIRED,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_kind(value)}")
        self._check_range(name, value, minimum, maximum, exclusive_min=False)
        return value

    def get_float(
        self,
        name: str,
        default: float | _Required = REQUIRED,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_min: bool = False,
    ) -> float:
        value = self._raw(name, default)
        # TOML writes 5000 and 5000.0 differently; both mean the same number of watts.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise self.error(name, "must be a finite number")
        self._check_range(name, number, minimum, maximum, exclusive_min=exclusive_min)
        return number

    def get_optional_float(
        self,
        name: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_min: bool = False,
    ) -> float | None:
        if name not in self.table:
            self._used.add(name)
            return None
        return self.get_float(name, minimum=minimum, maximum=maximum, exclusive_min=exclusive_min)

    def get_float_list(self, name: str, default: tuple[float, ...] | _Required = REQUIRED) -> tuple[float, ...]:
        value = self._raw(name, default)
        if not isinstance(value, list | tuple):
            raise self.error(name, f"expected an array of numbers, got {_kind(value)}")
        out: list[float] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
                raise SiteConfigError(self.path, f"{self.key(name)}[{i}]", f"expected a number, got {_kind(item)}")
            out.append(float(item))
        return tuple(out)

    def sub(self, name: str, *, required: bool = False) -> ParamReader:
        """A reader for the nested table `name` (an empty one when absent and not required)."""
        value = self._raw(name, REQUIRED if required else {})
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a table, got {_kind(value)}")
        return ParamReader(value, self.path, self.key(name))

    def subs(self, name: str) -> list[ParamReader]:
        """Readers for an array of tables (`[[name]]`), keyed `name[i]`."""
        value = self._raw(name, [])
        if not isinstance(value, list):
            raise self.error(name, f"expected an array of tables, got {_kind(value)}")
        readers = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise SiteConfigError(self.path, f"{self.key(name)}[{i}]", f"expected a table, got {_kind(item)}")
            readers.append(ParamReader(item, self.path, f"{self.key(name)}[{i}]"))
        return readers

    def mark_used(self, *names: str) -> None:
        self._used.update(names)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key")

    def _check_range(
        self, name: str, value: float, minimum: float | None, maximum: float | None, *, exclusive_min: bool
    ) -> None:
        if minimum is not None:
            if exclusive_min and value <= minimum:
                raise self.error(name, f"must be greater than {minimum:g}, got {value:g}")
            if not exclusive_min and value < minimum:
                raise self.error(name, f"must be at least {minimum:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum:g}, got {value:g}")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
