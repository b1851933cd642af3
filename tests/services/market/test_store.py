"""The market store on a real PostgreSQL: a document stored once however often it is saved, a new
revision replacing the values of its delivery interval (a dropped slot disappears) and keeping the
record of every revision, an older revision never rolling values back, the same values under a new
ENTSO-E document id counting as unchanged, nothing half-stored when a series fails mid-document,
the NOTIFY on commit, and border warnings upserted by their stable key."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from services.market import MarketDocument, PriceSeries, Product, Slot
from services.market.documents import parse_document
from services.market.interconnect import Border, BorderHour, BorderWarning, WarningKey
from services.market.store import (
    NOTIFY_CHANNEL,
    Publication,
    SaveOutcome,
    SaveResult,
    StoreError,
    save_document,
    save_documents,
    save_warnings,
)

DATA = Path(__file__).parent / "data"
DE_LU = "10Y1001A1001A82H"
FETCHED = datetime(2024, 10, 5, 11, 5, tzinfo=UTC)


def _doc(name: str) -> MarketDocument:
    return parse_document((DATA / name).read_bytes(), name)


@pytest.fixture
async def conn(db: asyncpg.Connection) -> asyncpg.Connection:
    """The module's database with empty market tables (the tests share one database)."""
    await db.execute("TRUNCATE market.documents, market.prices, market.flows, market.capacities, market.warnings")
    return db


async def _prices(conn: asyncpg.Connection) -> dict[tuple[datetime, int, int], float]:
    rows = await conn.fetch("SELECT delivery_start, resolution_s, sequence, value FROM market.prices")
    return {(r["delivery_start"], r["resolution_s"], r["sequence"]): r["value"] for r in rows}


def _expected(doc: MarketDocument) -> dict[tuple[datetime, int, int], float]:
    return {
        (slot.start, int(s.resolution.total_seconds()), s.sequence): slot.value for s in doc.prices for slot in s.slots
    }


async def test_a_document_is_stored_once_however_often_it_is_saved(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    first = await save_document(conn, doc, FETCHED)
    assert first.outcome is SaveOutcome.STORED
    assert first.written == sum(len(s.slots) for s in doc.prices) and first.replaced == 0
    assert first.zones == (DE_LU,)
    again = await save_document(conn, doc, FETCHED + timedelta(hours=1))
    assert again.outcome is SaveOutcome.UNCHANGED and again.written == 0
    assert await _prices(conn) == _expected(doc)
    records = await conn.fetch("SELECT document_id, revision, kind, fetched_at, value_count FROM market.documents")
    assert [tuple(r) for r in records] == [(doc.document_id, doc.revision, "prices", FETCHED, first.written)]


async def test_a_new_revision_replaces_the_values_and_keeps_the_revision_record(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    await save_document(conn, doc, FETCHED)
    # The revision changes every value of the first series and no longer gives its last slot.
    first = doc.prices[0]
    changed = replace(first, slots=tuple(Slot(s.start, s.value + 1.5) for s in first.slots[:-1]))
    revised = replace(doc, revision=doc.revision + 1, prices=(changed, *doc.prices[1:]))
    result = await save_document(conn, revised, FETCHED + timedelta(minutes=30))
    assert result.outcome is SaveOutcome.REVISED
    assert result.replaced == sum(len(s.slots) for s in doc.prices)
    assert await _prices(conn) == _expected(revised)
    dropped = (first.slots[-1].start, int(first.resolution.total_seconds()), first.sequence)
    assert dropped not in await _prices(conn)
    rows = await conn.fetch(
        "SELECT revision FROM market.documents WHERE document_id = $1 ORDER BY revision", doc.document_id
    )
    assert [r["revision"] for r in rows] == [doc.revision, doc.revision + 1]
    owners = await conn.fetch("SELECT DISTINCT document_id, revision FROM market.prices")
    assert [tuple(r) for r in owners] == [(doc.document_id, doc.revision + 1)]


async def test_an_older_revision_never_rolls_the_values_back(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    newer = replace(
        doc,
        revision=doc.revision + 1,
        prices=tuple(replace(s, slots=tuple(Slot(x.start, x.value * 2) for x in s.slots)) for s in doc.prices),
    )
    assert (await save_document(conn, newer, FETCHED)).outcome is SaveOutcome.STORED
    late = await save_document(conn, doc, FETCHED + timedelta(minutes=5))
    assert late.outcome is SaveOutcome.OUTDATED and late.written == 0
    assert await _prices(conn) == _expected(newer)


async def test_the_same_values_under_a_new_document_id_are_unchanged_but_recorded(conn: asyncpg.Connection) -> None:
    # ENTSO-E gives each answer its own mRID: fetching the same day again must not count as news.
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    await save_document(conn, doc, FETCHED)
    refetched = replace(doc, document_id=doc.document_id + "-again")
    result = await save_document(conn, refetched, FETCHED + timedelta(hours=2))
    assert result.outcome is SaveOutcome.UNCHANGED
    assert await _prices(conn) == _expected(doc)
    assert await conn.fetchval("SELECT count(*) FROM market.documents") == 2


async def test_a_republished_day_under_a_new_document_id_replaces_the_values(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    await save_document(conn, doc, FETCHED)
    series = doc.prices[0]
    corrected = replace(series, slots=(Slot(series.slots[0].start, -500.0), *series.slots[1:]))
    republished = replace(doc, document_id="another-mrid", prices=(corrected, *doc.prices[1:]))
    result = await save_document(conn, republished, FETCHED + timedelta(hours=2))
    assert result.outcome is SaveOutcome.REVISED
    assert await _prices(conn) == _expected(republished)


async def test_nothing_is_half_stored_when_a_series_fails_mid_document(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    assert len(doc.prices) >= 2
    second = doc.prices[1]
    bad = replace(second, slots=(*second.slots[:-1], Slot(second.slots[-1].start, math.nan)))
    with pytest.raises(StoreError, match=r"prices\[1\].*nan"):
        await save_document(conn, replace(doc, prices=(doc.prices[0], bad)), FETCHED)
    assert await _prices(conn) == {}
    assert await conn.fetchval("SELECT count(*) FROM market.documents") == 0


async def test_nothing_is_half_stored_when_the_database_refuses_a_row_mid_document(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    await save_document(conn, doc, FETCHED)
    # The revision's second series names a zone PostgreSQL's text cannot hold (a NUL byte): the first
    # series' replacement has already been written when the database refuses it.
    first = replace(doc.prices[0], slots=tuple(Slot(s.start, s.value + 1) for s in doc.prices[0].slots))
    broken = PriceSeries("bad\x00zone", Product.DAY_AHEAD, timedelta(hours=1), (Slot(first.slots[0].start, 1.0),))
    with pytest.raises(asyncpg.PostgresError):
        await save_document(conn, replace(doc, revision=doc.revision + 1, prices=(first, broken)), FETCHED)
    assert await _prices(conn) == _expected(doc)
    assert await conn.fetchval("SELECT count(*) FROM market.documents") == 1


async def test_a_naive_fetch_time_is_refused(conn: asyncpg.Connection) -> None:
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    with pytest.raises(StoreError, match="fetched_at"):
        await save_document(conn, doc, datetime(2024, 10, 5, 11, 5))


async def test_a_no_data_answer_is_recorded_without_values(conn: asyncpg.Connection) -> None:
    doc = _doc("Acknowledgement_999_no_matching_data.xml")
    result = await save_document(conn, doc, FETCHED)
    assert result.outcome is SaveOutcome.STORED and result.written == 0
    row = await conn.fetchrow("SELECT kind, no_data_reason, interval_start FROM market.documents")
    assert row is not None and tuple(row) == ("no-data", doc.no_data_reason, None)


async def test_flows_and_capacities_are_stored_and_replaced_alike(conn: asyncpg.Connection) -> None:
    flows = _doc("derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml")
    capacities = _doc("derived_A61_ES-PT_2024-10-07_capacity.xml")
    assert (await save_document(conn, flows, FETCHED)).outcome is SaveOutcome.STORED
    assert (await save_document(conn, capacities, FETCHED)).outcome is SaveOutcome.STORED
    stored_flows = await conn.fetchval("SELECT count(*) FROM market.flows")
    assert stored_flows == sum(len(s.slots) for s in flows.flows)
    assert await conn.fetchval("SELECT count(*) FROM market.capacities") == sum(
        len(s.slots) for s in capacities.capacities
    )
    series = flows.flows[0]
    revised = replace(flows, revision=flows.revision + 1, flows=(replace(series, slots=series.slots[:1]),))
    result = await save_document(conn, revised, FETCHED + timedelta(hours=1))
    assert result.outcome is SaveOutcome.REVISED
    rows = await conn.fetch("SELECT delivery_start, value FROM market.flows")
    assert [tuple(r) for r in rows] == [(series.slots[0].start, series.slots[0].value)]


async def test_a_stored_document_is_announced_on_commit_and_an_unchanged_one_is_not(
    conn: asyncpg.Connection, migrated_url: str
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(migrated_url)
    try:
        await listener.add_listener(NOTIFY_CHANNEL, lambda _c, _p, _ch, payload: received.put_nowait(str(payload)))
        doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
        await save_document(conn, doc, FETCHED)
        publication = Publication.from_json(await asyncio.wait_for(received.get(), timeout=10))
        assert (publication.document_id, publication.revision, publication.outcome) == (
            doc.document_id,
            doc.revision,
            SaveOutcome.STORED,
        )
        assert publication.zones == (DE_LU,) and publication.fetched_at == FETCHED
        assert (await save_document(conn, doc, FETCHED)).outcome is SaveOutcome.UNCHANGED
        # A marker sent after the second save arrives first: the unchanged save sent nothing.
        await conn.execute("SELECT pg_notify($1, 'marker')", NOTIFY_CHANNEL)
        assert await asyncio.wait_for(received.get(), timeout=10) == "marker"
    finally:
        await listener.close()


async def test_warnings_are_upserted_by_their_stable_key_with_their_evidence(conn: asyncpg.Connection) -> None:
    border = Border("10YES-REE------0", "10YFR-RTE------C")
    start = datetime(2024, 10, 7, 10, tzinfo=UTC)
    hour = BorderHour(start, 2850.0, 3000.0, 0.95, 60.0, 95.0, 35.0)
    warning = BorderWarning(WarningKey(border, "decoupling", date(2024, 10, 7)), "ES-FR saturated", (hour,), 0.9, 20.0)
    assert await save_warnings(conn, [warning]) == 1
    later = replace(warning, hours=(hour, replace(hour, start=start + timedelta(hours=1))))
    assert await save_warnings(conn, [later]) == 1
    rows = await conn.fetch("SELECT warning_key, kind, evidence FROM market.warnings")
    assert len(rows) == 1 and rows[0]["warning_key"] == str(warning.key) and rows[0]["kind"] == "decoupling"
    evidence = json.loads(rows[0]["evidence"])
    assert [h["start"] for h in evidence["hours"]] == [start.isoformat(), (start + timedelta(hours=1)).isoformat()]
    assert evidence["hours"][0]["utilisation"] == 0.95 and evidence["saturation_threshold"] == 0.9


async def _state(conn: asyncpg.Connection) -> dict[str, object]:
    """Everything a save leaves behind but the times it was written at."""
    tables = {
        "prices": "SELECT * FROM market.prices ORDER BY 1, 2, 3, 4, 5, 6, 7",
        "flows": "SELECT * FROM market.flows ORDER BY 1, 2, 3, 4",
        "capacities": "SELECT * FROM market.capacities ORDER BY 1, 2, 3, 4",
        "documents": "SELECT source, document_id, revision, kind, fetched_at, created_at, interval_start,"
        " interval_end, no_data_reason, zones, value_count FROM market.documents ORDER BY 1, 2, 3",
        "warnings": "SELECT warning_key, message, evidence::text FROM market.warnings ORDER BY 1",
    }
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in tables.items()}


def _sequence_of_saves() -> list[MarketDocument]:
    """Stored, unchanged, revised, outdated, the same values under a new id, no data, a border whose
    flows, capacities and both zones' prices raise warnings, and a republished day."""
    a = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    b = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    a_revised = replace(
        a,
        revision=a.revision + 1,
        prices=tuple(replace(s, slots=tuple(Slot(x.start, x.value + 1) for x in s.slots)) for s in a.prices),
    )
    first = b.prices[0]
    republished = replace(
        b, document_id="another-mrid", prices=(replace(first, slots=(Slot(first.slots[0].start, -5.0),)), *b.prices[1:])
    )
    return [
        a,
        b,
        a,
        a_revised,
        a,
        replace(b, document_id=b.document_id + "-again"),
        _doc("Acknowledgement_999_no_matching_data.xml"),
        _doc("derived_A11_ES-FR_2024-10-07_flows_saturated.xml"),
        _doc("derived_A61_ES-FR_2024-10-07_capacity.xml"),
        _doc("derived_A44_ES_2024-10-07_dayahead.xml"),
        _doc("derived_A44_FR_2024-10-07_dayahead.xml"),
        republished,
    ]


async def test_a_batch_leaves_what_saving_its_documents_one_after_another_leaves(conn: asyncpg.Connection) -> None:
    docs = _sequence_of_saves()
    one_by_one = [await save_document(conn, doc, FETCHED) for doc in docs]
    expected = await _state(conn)
    await conn.execute("TRUNCATE market.documents, market.prices, market.flows, market.capacities, market.warnings")

    batch = await save_documents(conn, docs, FETCHED)

    def summary(r: SaveResult) -> tuple[object, ...]:
        return (r.outcome, r.document_id, r.revision, r.written, r.replaced, r.zones, r.interval)

    assert [summary(r) for r in batch] == [summary(r) for r in one_by_one]
    assert [r.outcome.value for r in batch] == [
        "stored", "stored", "unchanged", "revised", "outdated", "unchanged", "stored",
        "stored", "stored", "stored", "stored", "revised",
    ]  # fmt: skip
    assert await _state(conn) == expected
    # The same warnings raised; which document of one batch is named as raising one may differ (the
    # batch assesses after writing all of its group, so the first document of the border raises them).
    assert {k for r in batch for k in r.warnings} == {k for r in one_by_one for k in r.warnings} != set()


async def test_a_batch_with_a_refused_document_writes_none_of_them(conn: asyncpg.Connection) -> None:
    good = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    second = doc.prices[1]
    bad = replace(doc, prices=(doc.prices[0], replace(second, slots=(Slot(second.slots[0].start, math.inf),))))
    with pytest.raises(StoreError, match=rf"{doc.document_id}: prices\[1\].*inf"):
        await save_documents(conn, [good, bad], FETCHED)
    assert await _state(conn) == {"prices": [], "flows": [], "capacities": [], "documents": [], "warnings": []}


async def test_a_batch_the_database_refuses_midway_is_rolled_back_whole(conn: asyncpg.Connection) -> None:
    good = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    await save_document(conn, doc, FETCHED)
    before = await _state(conn)
    start = doc.prices[0].slots[0].start
    broken = PriceSeries("bad\x00zone", Product.DAY_AHEAD, timedelta(hours=1), (Slot(start, 1),))
    revised = replace(doc, revision=doc.revision + 1, prices=(*doc.prices, broken))
    with pytest.raises(asyncpg.PostgresError):
        await save_documents(conn, [good, revised], FETCHED)
    assert await _state(conn) == before


async def test_a_batch_announces_each_stored_document_in_order(conn: asyncpg.Connection, migrated_url: str) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(migrated_url)
    try:
        await listener.add_listener(NOTIFY_CHANNEL, lambda _c, _p, _ch, payload: received.put_nowait(str(payload)))
        a = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
        b = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
        await save_documents(conn, [a, b, a], FETCHED)
        await conn.execute("SELECT pg_notify($1, 'marker')", NOTIFY_CHANNEL)
        payloads = [await asyncio.wait_for(received.get(), timeout=10) for _ in range(3)]
        assert [Publication.from_json(p).document_id for p in payloads[:2]] == [a.document_id, b.document_id]
        assert payloads[2] == "marker"  # the unchanged third save announced nothing
    finally:
        await listener.close()


async def test_a_slot_outside_the_documents_interval_is_refused(conn: asyncpg.Connection) -> None:
    # A document replaces exactly its interval; a slot beyond it would overwrite what it does not replace.
    doc = _doc("A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml")
    assert doc.interval is not None
    narrowed = replace(doc, interval=(doc.interval[0], doc.interval[1] - timedelta(hours=1)))
    with pytest.raises(StoreError, match="outside the document's interval"):
        await save_document(conn, narrowed, FETCHED)
    # The same at the start (the parser's contiguous slots are a range, read by its ends).
    late = replace(doc, interval=(doc.interval[0] + timedelta(hours=1), doc.interval[1]))
    with pytest.raises(StoreError, match="outside the document's interval"):
        await save_document(conn, late, FETCHED)
    twice = replace(doc, prices=(doc.prices[0], doc.prices[0]))
    with pytest.raises(StoreError, match="a series is given once"):
        await save_document(conn, twice, FETCHED)
    assert await _prices(conn) == {}


async def test_the_revision_record_holds_every_field_of_the_document(conn: asyncpg.Connection) -> None:
    # The records are written by a binary COPY the store encodes itself: each column read back.
    doc = _doc("A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml")
    nodata = _doc("Acknowledgement_999_no_matching_data.xml")
    await save_documents(conn, [doc, nodata], FETCHED)
    rows = await conn.fetch(
        "SELECT source, document_id, revision, kind, fetched_at, created_at, interval_start, interval_end,"
        " no_data_reason, zones, value_count FROM market.documents ORDER BY kind"
    )
    assert doc.interval is not None
    assert [tuple(r) for r in rows] == [
        (
            "entsoe",
            nodata.document_id,
            0,
            "no-data",
            FETCHED,
            nodata.created_at,
            None,
            None,
            nodata.no_data_reason,
            [],
            0,
        ),
        (
            "entsoe",
            doc.document_id,
            doc.revision,
            "prices",
            FETCHED,
            doc.created_at,
            doc.interval[0],
            doc.interval[1],
            "",
            [DE_LU],
            sum(len(s.slots) for s in doc.prices),
        ),
    ]


def test_a_publication_payload_is_the_json_the_general_encoder_writes() -> None:
    interval = (datetime(2024, 10, 5, 22, tzinfo=UTC), datetime(2024, 10, 6, 22, tzinfo=UTC))
    for publication in (
        Publication("entsoe", 'id "quoted" \\ é\n', 3, "prices", SaveOutcome.REVISED, FETCHED, ("A",), interval, 2, 1),
        Publication("entsoe", "x", 0, "no-data", SaveOutcome.STORED, FETCHED, (), None),
    ):
        expected = json.dumps(
            {
                "source": publication.source,
                "document_id": publication.document_id,
                "revision": publication.revision,
                "kind": publication.kind,
                "outcome": publication.outcome.value,
                "fetched_at": publication.fetched_at.isoformat(),
                "zones": list(publication.zones),
                "interval": [t.isoformat() for t in publication.interval] if publication.interval else None,
                "warnings": publication.warnings,
                "cleared": publication.cleared,
            },
            separators=(",", ":"),
        )
        assert publication.to_json() == expected
        assert Publication.from_json(publication.to_json()) == publication


def test_a_publication_payload_writes_each_time_as_given_even_when_equal_times_were_written_before() -> None:
    # to_json caches formatted UTC times; equal times in another zone keep their own offset and fold.
    madrid = ZoneInfo("Europe/Madrid")
    first = datetime(2024, 10, 27, 2, 30, tzinfo=madrid)  # CEST, 00:30 UTC
    repeated = datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=madrid)  # CET, 01:30 UTC
    for fetched in (first.astimezone(UTC), first, repeated, repeated.astimezone(UTC), first.astimezone(UTC)):
        publication = Publication("entsoe", "x", 1, "prices", SaveOutcome.STORED, fetched, (), (fetched, fetched))
        payload = json.loads(publication.to_json())
        assert payload["fetched_at"] == fetched.isoformat()
        assert payload["interval"] == [fetched.isoformat(), fetched.isoformat()]
