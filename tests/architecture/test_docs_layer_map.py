"""docs/architecture.md's layer map says, per cloud domain, which domains it may import; that column is
what a reader trusts, so it must be the DEPENDS_ON the import test enforces (it once lacked `market`
for services.alarm after the alarm engine began reading the market's warnings)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.architecture.test_layers import declared_dependencies

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
# | `services.alarm` | what it owns ... | telemetry, registry, identity, kernel |
_ROW = re.compile(r"^\| `(services\.[a-z_]+)` \|.*\| ([^|]+) \|\s*$")


def documented_dependencies() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        row = _ROW.match(line)
        if row:
            names = {n.strip() for n in row.group(2).split(",")} - {"kernel"}
            found[row.group(1)] = {f"services.{n}" for n in names}
    return found


def test_the_documented_layer_map_lists_every_domain_with_its_declared_dependencies() -> None:
    documented = documented_dependencies()
    declared = declared_dependencies()
    assert set(documented) == set(declared), "domains missing from or extra in docs/architecture.md"
    differ = {d: (sorted(documented[d]), sorted(declared[d])) for d in declared if documented[d] != declared[d]}
    assert not differ, f"docs/architecture.md (documented, declared DEPENDS_ON): {differ}"
