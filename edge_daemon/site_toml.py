"""Writing a site document (the shape `load_config` reads) back out as TOML.

`emma up` generates the site files of its simulated edges with it; tomllib reads TOML but cannot
write it, and the site format needs only tables, arrays of tables and scalars.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_daemon.private_files import write_private_text


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {value!r} as a TOML scalar")


def dump_site_toml(doc: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_scalar(v)}" for k, v in item.items()]
        else:
            raise TypeError(f"top-level {key} must be a table or an array of tables")
        lines.append("")
    return "\n".join(lines)


def write_site_toml(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write the file atomically (a daemon may be reading the previous version), 0600: it names the
    cloud endpoint, the edge and its key file."""
    return write_private_text(path, dump_site_toml(doc))
