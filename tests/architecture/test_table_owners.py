"""Every table has one owning domain, and only its owner's SQL names it.

Owners declare their tables in their package face (`TABLES = (...)` in services/<domain>/__init__.py,
the kernel's in services/platform/__init__.py). The migrations create every table; this test reads
them for the list of tables that need an owner. Other packages reach a table through its owner's
package face or its gRPC API, never its SQL.
"""

from __future__ import annotations

import re

from tests.architecture.imports import ROOT, literal_strings, modules, table_refs, top
from tests.architecture.test_layers import domains

MIGRATIONS = ROOT / "services" / "migrations"
_CREATED = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?(?:TABLE|MATERIALIZED\s+VIEW|VIEW|FUNCTION)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"([a-z_]+\.[a-z_0-9]+)",
    re.IGNORECASE,
)
# Partitions and chunks are created under their parent's name by the parent's owner.
_NOT_A_TABLE = re.compile(r"_p\d|_default$")


def owners() -> dict[str, list[str]]:
    """table -> the units that claim it (services.<domain> or services.platform)."""
    claims: dict[str, list[str]] = {}
    faces = dict(domains())
    faces["services.platform"] = modules()["services.platform"]
    for unit, face in faces.items():
        for table in literal_strings(face.assigns.get("TABLES")):
            claims.setdefault(table, []).append(unit)
    return claims


def created_tables() -> set[str]:
    found: set[str] = set()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        for name in _CREATED.findall(path.read_text(encoding="utf-8")):
            if not _NOT_A_TABLE.search(name):
                found.add(name.lower())
    return found


def foreign_sql() -> set[str]:
    """'<module> uses <table> (owned by <unit>)' for every SQL string that names another unit's table."""
    claims = owners()
    found: set[str] = set()
    for name, module in modules().items():
        if top(name) not in ("services", "gateway", "launcher", "core", "edge_daemon"):
            continue
        unit = ".".join(name.split(".")[:2])
        for _line, sql in module.sql:
            for table in sorted(table_refs(sql)):
                owner = claims.get(table, ["nobody"])[0]
                if owner != unit:
                    found.add(f"{name} uses {table} (owned by {owner})")
    return found


def test_every_table_has_exactly_one_owner() -> None:
    claims = owners()
    problems = [f"{t}: no owner" for t in sorted(created_tables()) if t not in claims]
    problems += [f"{t}: claimed by {', '.join(units)}" for t, units in sorted(claims.items()) if len(units) > 1]
    problems += [f"{t}: claimed but no migration creates it" for t in sorted(set(claims) - created_tables())]
    assert problems == []


def test_only_the_owner_names_a_table_in_sql() -> None:
    found = sorted(foreign_sql())
    assert found == [], "SQL on another domain's tables (go through the owner's package face):\n" + "\n".join(found)
