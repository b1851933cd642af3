"""`emma optimize savings` as a real subprocess against real identity, registry and optimizer services
over a real PostgreSQL: two sites, three UTC days. On the first day site A's battery followed its plan
(the hand-checked case of test_realised_savings: 0.20 EUR realised, 0.60 EUR baseline, 0.2 kg against
1.0 kg CO2); on the second it did nothing (0.60 EUR and 1.0 kg both ways, nothing saved). Site B has a
plan on the first day but no measurements; the third day has nothing at all. The table has a row per
site and day, one for all sites (the slots both compared: none), and the period's sums; refusals are
one line with exit code 1."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from services.names import EdgeName
from services.registry import ensure_edge, store_inventory
from tests.launcher.test_optimize_cli import optimize
from tests.services.optimizer.test_platform_inputs import SLOT, UTC, _inventory, add_series, store_samples
from tests.support.cloud import Host
from tests.support.identity import PASSWORD, grant
from tests.support.optimizer_plans import store_plan_made_before


async def _site(db: asyncpg.Connection) -> tuple[EdgeName, int]:
    edge = EdgeName("acme", f"sc-{uuid.uuid4().hex[:8]}", "gw")
    pk = await ensure_edge(db, edge, time_zone="Europe/Berlin", country_code="DE")
    await store_inventory(db, pk, [d for d in _inventory() if d.device_id in ("battery_1", "grid_1")])
    return edge, pk


def _cells(line: str) -> list[str]:
    # Site names hold no spaces; "all sites" does.
    return line.replace("all sites", "all_sites").split()


async def test_savings_per_site_and_day_and_for_the_period(
    host: Host, db: asyncpg.Connection, migrated_url: str
) -> None:
    today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first, second = today - dt.timedelta(days=3), today - dt.timedelta(days=2)
    (a, pk_a), (b, _) = await _site(db), await _site(db)
    for day in (first, second):
        await store_plan_made_before(db, a, day + dt.timedelta(hours=10))
    await store_plan_made_before(db, b, first + dt.timedelta(hours=10))
    points: dict[str, list[tuple[dt.datetime, float]]] = {"grid_1/ActivePower": [], "battery_1/ActivePower": []}
    for day, grid, battery in (
        (first, [4000.0, 4000.0, 0.0, 0.0], [-4000.0, -4000.0, 4000.0, 4000.0]),  # followed the plan
        (second, [0.0, 0.0, 4000.0, 4000.0], [0.0] * 4),  # the battery stood still
    ):
        mid = [day + dt.timedelta(hours=10) + SLOT * i + SLOT / 2 for i in range(4)]
        points["grid_1/ActivePower"] += list(zip(mid, grid, strict=True))
        points["battery_1/ActivePower"] += list(zip(mid, battery, strict=True))
    await store_samples(migrated_url, pk_a, {await add_series(db, pk_a, ch): rows for ch, rows in points.items()})
    viewer = await grant(db, "acme", "viewer")
    site_a, site_b = str(a.site_name), str(b.site_name)
    async with host(["identity", "registry", "optimizer"]) as (server, _):
        cloud = f"127.0.0.1:{server.port}"
        code, lines, err = await optimize(
            "savings",
            *("--site", site_a, "--site", site_b),
            *("--from", str(first.date()), "--to", str((second + dt.timedelta(days=2)).date())),
            *("--cloud", cloud, "--email", viewer.email),
        )
        assert code == 0, (lines, err)
        header, *rows = [_cells(line) for line in lines]
        assert header[:4] == ["day", "site", "slots", "missing"]
        table = {(r[0], r[1]): [float(x) for x in r[2:]] for r in rows}
        assert len(rows) == len(table) == 4 * 3
        d1, d2, d3 = str(first.date()), str(second.date()), str((second + dt.timedelta(days=1)).date())
        # slots, missing, realised EUR, planned EUR, baseline EUR, saved EUR, realised kg, baseline kg, saved kg
        assert table[(d1, site_a)] == pytest.approx([4, 92, 0.2, 0.2, 0.6, 0.4, 0.2, 1.0, 0.8], abs=1e-4)
        assert table[(d2, site_a)] == pytest.approx([4, 92, 0.6, 0.2, 0.6, 0.0, 1.0, 1.0, 0.0], abs=1e-4)
        assert table[(d3, site_a)] == [0, 96] + [0.0] * 7
        for day in (d1, d2, d3):  # B planned but never measured: nothing compared, every slot missing
            assert table[(day, site_b)] == [0, 96] + [0.0] * 7
            assert table[(day, "all_sites")] == [0, 96] + [0.0] * 7
        assert table[("period", site_a)] == pytest.approx([8, 280, 0.8, 0.4, 1.2, 0.4, 1.2, 2.0, 0.8], abs=1e-4)
        assert table[("period", "all_sites")] == [0, 288] + [0.0] * 7

        # One site alone, one day (--to defaults to the next day): the total is that site's.
        code, lines, err = await optimize(
            "savings", "--site", site_a, "--from", d1, "--cloud", cloud, "--email", viewer.email
        )
        assert code == 0, err
        alone = {(r[0], r[1]): [float(x) for x in r[2:]] for r in [_cells(line) for line in lines[1:]]}
        assert alone[(d1, "all_sites")] == alone[(d1, site_a)] == alone[("period", site_a)]

        refusals = [
            (("--site", "sites/x", "--from", d1), viewer.email, PASSWORD, "is not organizations/{organization}/sites"),
            (("--site", site_a, "--from", "yesterday"), viewer.email, PASSWORD, "is not a day (YYYY-MM-DD)"),
            (("--site", site_a, "--from", d2, "--to", d1), viewer.email, PASSWORD, "must be after --from"),
            (("--site", site_a, "--site", site_a, "--from", d1), viewer.email, PASSWORD, "each --site once"),
            (("--site", "organizations/acme/sites/nowhere", "--from", d1), viewer.email, PASSWORD, "NOT_FOUND"),
            (("--site", site_a, "--from", d1), viewer.email, "wrong password", "logging in as"),
        ]
        for args, email, password, message in refusals:
            code, lines, err = await optimize("savings", *args, "--cloud", cloud, "--email", email, password=password)
            assert code == 1 and lines == [], (args, lines, err)
            assert err.startswith("emma optimize savings: error: ") and message in err, err
            assert len(err.strip().splitlines()) == 1, err
