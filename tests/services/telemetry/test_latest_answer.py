"""services/telemetry/latest_answer.py: ListLatestValues answers from real rows, the previous answer's
values copied only while a parent's rows are equal, and never an answer changed once returned."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.names import EdgeName, Scope
from services.telemetry.latest_answer import LatestAnswers

UTC = dt.UTC
EDGES = {7: EdgeName("acme", "home", "gw"), 8: EdgeName("acme", "home", "gw2")}
SITE = Scope("acme", "home", None, None)
T0 = dt.datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


async def _rows(db: asyncpg.Connection, soc: float, at: dt.datetime = T0) -> Sequence[Any]:
    """Rows shaped like the latest-value read's (a fresh list of Records each time)."""
    return list(
        await db.fetch(
            """SELECT * FROM (VALUES (7::bigint, 'battery_1/Soc', '%', $2::timestamptz, $1::float8),
                                     (7, 'meter/GridPower', 'W', $2 - interval '1.5 s', 300.0),
                                     (8, 'pv/ActivePower', 'W', $2, -1200.25))
                      AS r(edge_pk, channel, unit, time, value)""",
            soc,
            at,
        )
    )


def _built(rows: Sequence[Any], read_time: dt.datetime, edges: dict[int, EdgeName] = EDGES) -> bytes:
    """The answer a fresh LatestAnswers builds from the rows, as bytes."""
    return LatestAnswers().answer(SITE, edges, rows, read_time).SerializeToString()


async def test_equal_rows_get_the_previous_values_and_their_own_read_time(db: asyncpg.Connection) -> None:
    answers = LatestAnswers()
    first = answers.answer(SITE, EDGES, await _rows(db, 55.0), T0)
    assert [(v.channel, v.value, v.unit, v.sample_time.ToDatetime(UTC)) for v in first.values] == [
        ("organizations/acme/sites/home/edges/gw/devices/battery_1/channels/Soc", 55.0, "%", T0),
        (
            "organizations/acme/sites/home/edges/gw/devices/meter/channels/GridPower",
            300.0,
            "W",
            T0 - dt.timedelta(seconds=1.5),
        ),
        ("organizations/acme/sites/home/edges/gw2/devices/pv/channels/ActivePower", -1200.25, "W", T0),
    ]
    first_bytes = first.SerializeToString()
    # What the copy rests on: Records of two reads compare equal, column by column.
    assert await _rows(db, 55.0) == await _rows(db, 55.0)
    assert await _rows(db, 55.0) != await _rows(db, 55.5)
    later = T0 + dt.timedelta(seconds=1)
    again = answers.answer(SITE, EDGES, await _rows(db, 55.0), later)
    assert again is not first
    assert again.SerializeToString() == _built(await _rows(db, 55.0), later)
    assert first.SerializeToString() == first_bytes  # an answer once returned is never changed


async def test_a_changed_row_is_in_the_next_answer(db: asyncpg.Connection) -> None:
    answers = LatestAnswers()
    answers.answer(SITE, EDGES, await _rows(db, 55.0), T0)
    for soc, at in ((56.0, T0), (56.0, T0 + dt.timedelta(microseconds=1)), (55.0, T0)):
        rows = await _rows(db, soc, at)
        assert answers.answer(SITE, EDGES, rows, T0).SerializeToString() == _built(rows, T0)
    fewer = (await _rows(db, 55.0))[:2]
    assert answers.answer(SITE, EDGES, fewer, T0).SerializeToString() == _built(fewer, T0)


async def test_parents_never_share_answers_and_few_are_remembered(db: asyncpg.Connection) -> None:
    """Two parents with equal rows but other edges (names by pk) each get their own values."""
    answers = LatestAnswers(max_parents=2)
    other_edges = {7: EdgeName("beta", "farm", "gw"), 8: EdgeName("beta", "farm", "gw2")}
    other = Scope("beta", "farm", None, None)
    rows = await _rows(db, 55.0)
    answers.answer(SITE, EDGES, rows, T0)
    assert answers.answer(other, other_edges, rows, T0).SerializeToString() == _built(rows, T0, other_edges)
    assert answers.answer(SITE, EDGES, rows, T0).SerializeToString() == _built(rows, T0)
    answers.answer(Scope("acme", "home", "gw", None), EDGES, rows, T0)
    assert len(answers) == 2
    empty = answers.answer(Scope("acme", "empty", None, None), EDGES, [], T0)
    assert list(empty.values) == []
    assert empty.read_time.ToDatetime(UTC) == T0
