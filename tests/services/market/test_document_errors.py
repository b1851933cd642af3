"""Documents EMMA cannot read: each is a DocumentError naming the document and the field, never a
crash, a silent gap or a guess. Most are a real document with one thing broken."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.market import DocumentError
from services.market.documents import MAX_DOCUMENT_BYTES, parse_document
from services.market.entsoe_xml import MAX_SLOTS, parse_xml

DATA = Path(__file__).parent / "data"
A44 = (DATA / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml").read_bytes()
A44_TWO = (DATA / "A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml").read_bytes()
ESIOS = (DATA / "esios_indicator_1001_PVPC_2024-03-09.json").read_bytes()
REDATA = (DATA / "redata_precios-mercados-tiempo-real_2023-11-29_pvpc+spot.json").read_bytes()
FIRST_PERIOD_END = b"<end>2024-10-06T22:00Z</end>\n            </timeInterval>\n            <resolution>PT60M"


def refused(body: bytes, name: str = "doc") -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        parse_document(body, name)
    assert caught.value.document == name
    assert str(caught.value).startswith(f"{name}: {caught.value.field_path}: ")
    return caught.value


def once(body: bytes, old: bytes, new: bytes) -> bytes:
    assert body.count(old) >= 1, old
    return body.replace(old, new, 1)


def test_a_period_longer_than_its_points_allow_names_the_point() -> None:
    # The first hourly Period shortened to 12 hours: its positions 13..24 no longer fit.
    body = once(A44, FIRST_PERIOD_END, FIRST_PERIOD_END.replace(b"2024-10-06T22:00Z", b"2024-10-06T10:00Z"))
    e = refused(body, "short.xml")
    assert e.field_path.startswith("TimeSeries[0].Period[0].Point")
    assert "12" in e.problem


def test_an_interval_that_is_not_whole_slots_names_the_interval() -> None:
    body = once(A44, FIRST_PERIOD_END, FIRST_PERIOD_END.replace(b"22:00Z", b"22:20Z"))
    e = refused(body)
    assert e.field_path == "TimeSeries[0].Period[0].timeInterval"


def test_a_repeated_position_is_refused() -> None:
    body = once(A44, b"<position>2</position>", b"<position>1</position>")
    e = refused(body)
    assert e.field_path == "TimeSeries[0].Period[0].Point[1].position" and "twice" in e.problem


def test_a03_without_position_1_is_refused() -> None:
    body = once(A44, b"<position>1</position>", b"<position>15</position>")
    e = refused(body)
    assert e.field_path == "TimeSeries[0].Period[0].Point" and "A03" in e.problem


def test_position_zero_is_refused() -> None:
    e = refused(once(A44, b"<position>1</position>", b"<position>0</position>"))
    assert e.field_path == "TimeSeries[0].Period[0].Point[0].position"


@pytest.mark.parametrize("amount", [b"abc", b"nan", b"inf", b""])
def test_a_price_that_is_not_a_finite_number_is_refused(amount: bytes) -> None:
    e = refused(once(A44, b"<price.amount>67.04</price.amount>", b"<price.amount>" + amount + b"</price.amount>"))
    assert e.field_path == "TimeSeries[0].Period[0].Point[0].price.amount"


def test_a_zone_that_is_not_an_eic_is_refused() -> None:
    # One character off: the EIC check character no longer matches.
    e = refused(once(A44, b">10Y1001A1001A82H</in_Domain", b">10Y1001A1001A82X</in_Domain"))
    assert e.field_path == "TimeSeries[0].in_Domain.mRID" and "not an EIC" in e.problem


def test_an_unknown_document_type_is_refused() -> None:
    e = refused(once(A44, b"<type>A44</type>", b"<type>A65</type>"))
    assert e.field_path == "type" and "A65" in e.problem


def test_an_unknown_contract_type_is_refused() -> None:
    e = refused(once(A44, b"<contract_MarketAgreement.type>A01<", b"<contract_MarketAgreement.type>A13<"))
    assert e.field_path == "TimeSeries[0].contract_MarketAgreement.type"


def test_an_unsupported_resolution_is_refused() -> None:
    e = refused(once(A44, b"<resolution>PT60M</resolution>", b"<resolution>P1Y</resolution>"))
    assert e.field_path == "TimeSeries[0].Period[0].resolution"


def test_two_periods_giving_the_same_slot_are_refused() -> None:
    # Day two of sequence 2 moved onto day one of sequence 2 (A44_TWO lists them as TimeSeries 0 and 2).
    body = A44_TWO.replace(b"<start>2026-02-02T23:00Z</start>", b"<start>2026-02-01T23:00Z</start>")
    body = body.replace(
        b"<end>2026-02-03T23:00Z</end>\n            </timeInterval>",
        b"<end>2026-02-02T23:00Z</end>\n            </timeInterval>",
    )
    e = refused(body)
    assert "two Periods give the slot at 2026-02-01T23:00:00+00:00" in e.problem


def test_a_missing_time_zone_is_refused() -> None:
    e = refused(
        once(
            A44,
            b"<start>2024-10-05T22:00Z</start>\n              <end>",
            b"<start>2024-10-05T22:00</start>\n              <end>",
        )
    )
    assert e.field_path == "TimeSeries[0].Period[0].timeInterval.start"


def test_malformed_xml_names_the_document() -> None:
    e = refused(A44[: len(A44) // 2], "cut.xml")
    assert e.field_path == "(document)" and "malformed XML" in e.problem


@pytest.mark.parametrize("encoding", [b"utp-8", b"x" * 200])
def test_an_unknown_encoding_is_refused(encoding: bytes) -> None:
    e = refused(A44.replace(b'encoding="utf-8"', b'encoding="' + encoding + b'"', 1), "odd.xml")
    assert e.field_path == "(document)" and e.problem.startswith("malformed XML: unknown encoding: ")


def test_xml_that_is_not_entsoe_is_refused() -> None:
    e = refused(b'<?xml version="1.0"?><rss version="2.0"><channel/></rss>')
    assert e.field_path == "(root)"


def test_an_unknown_entsoe_root_is_refused() -> None:
    e = refused(A44.replace(b"Publication_MarketDocument", b"Unavailability_MarketDocument"))
    assert e.field_path == "(root)"


def test_entity_expansion_is_refused_not_expanded() -> None:
    # "Billion laughs": ten levels of ten-fold entities would expand to 10**10 characters.
    entities = '<!ENTITY a0 "lol">' + "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 11))
    body = f'<?xml version="1.0"?><!DOCTYPE d [{entities}]><d>&a10;</d>'.encode()
    e = refused(body)
    assert e.field_path == "(document)" and "refused" in e.problem


def test_an_external_entity_is_refused() -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>'
    assert "refused" in refused(body).problem


@pytest.mark.parametrize(
    "body",
    [
        # The quick check only trusts UTF-8 bytes without "<!DOCTYPE": every other spelling of a DTD
        # goes through the full expat pass and is refused all the same.
        b'\xef\xbb\xbf<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>',
        b'<?xml version="1.0" encoding="latin-1"?><!DOCTYPE d [<!ENTITY x "y">]><d>&x;</d>',
        b'<!-- a comment first --><!DOCTYPE d [<!ENTITY x "y">]><d>&x;</d>',
    ],
)
def test_a_dtd_is_refused_in_every_encoding_and_position(body: bytes) -> None:
    assert "refused" in refused(body).problem


def test_a_utf16_dtd_is_refused_by_the_xml_reader() -> None:
    # parse_document sends only documents starting with "<" here; the XML reader refuses it anyway.
    body = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x "y">]><d>&x;</d>'.encode("utf-16")
    with pytest.raises(DocumentError, match="refused"):
        parse_xml(body, "utf16.xml")


def test_a_document_over_the_size_limit_is_refused_before_parsing() -> None:
    e = refused(b" " * (MAX_DOCUMENT_BYTES + 1))
    assert e.field_path == "(document)" and str(MAX_DOCUMENT_BYTES) in e.problem


@pytest.mark.parametrize(
    ("body", "needle"),
    [(b"", "empty"), (b"hello", "neither XML nor JSON"), (b"[1, 2]", "not an object"), (b'{"a": 1}', "unknown")],
)
def test_documents_of_no_known_kind(body: bytes, needle: str) -> None:
    assert needle in refused(body).problem


def test_malformed_json_names_the_document() -> None:
    e = refused(ESIOS[:-40], "cut.json")
    assert e.field_path == "(document)" and "malformed JSON" in e.problem


def test_json_nan_is_refused() -> None:
    assert "NaN" in refused(b'{"indicator": {"id": NaN}}').problem


def esios_with(change: dict[str, object], index: int = 0) -> bytes:
    body = json.loads(ESIOS)
    body["indicator"]["values"][index].update(change)
    return json.dumps(body).encode()


def test_esios_local_time_without_offset_is_refused() -> None:
    e = refused(esios_with({"datetime_utc": None, "datetime": "2024-03-09T00:00:00.000"}, index=3))
    assert e.field_path == "indicator.values[3].datetime" and "offset" in e.problem


def test_esios_two_values_for_one_hour_are_refused() -> None:
    # Península's second hour moved onto its first.
    e = refused(esios_with({"datetime_utc": "2024-03-08T23:00:00Z"}, index=5))
    assert e.field_path == "indicator.values(geo_id 8741)" and "two values" in e.problem


@pytest.mark.parametrize("value", ["44.98", True, None])
def test_esios_value_that_is_not_a_number_is_refused(value: object) -> None:
    e = refused(esios_with({"value": value}, index=7))
    assert e.field_path == "indicator.values[7].value"


def test_esios_unknown_geography_is_refused() -> None:
    assert refused(esios_with({"geo_id": 3})).field_path == "indicator.values[0].geo_id"


def test_esios_other_indicator_is_refused() -> None:
    body = json.loads(ESIOS)
    body["indicator"]["id"] = 600
    assert refused(json.dumps(body).encode()).field_path == "indicator.id"


def test_redata_value_time_without_offset_is_refused() -> None:
    body = json.loads(REDATA)
    body["included"][1]["attributes"]["values"][2]["datetime"] = "2023-11-29T02:00:00.000"
    e = refused(json.dumps(body).encode())
    assert e.field_path == "included[1].attributes.values[2].datetime"


def test_a03_expanding_beyond_the_slot_limit_is_refused() -> None:
    # 29 Periods of 366 days at PT15M, one Point each: a 10 kB document that A03 would expand to
    # 29 x 35 136 = 1 018 944 slots.
    start = datetime(2000, 1, 1, tzinfo=UTC)
    periods = []
    for _ in range(29):
        end = start + timedelta(days=366)
        periods.append(
            f"<Period><timeInterval><start>{start:%Y-%m-%dT%H:%MZ}</start><end>{end:%Y-%m-%dT%H:%MZ}</end>"
            "</timeInterval><resolution>PT15M</resolution><Point><position>1</position>"
            "<price.amount>1</price.amount></Point></Period>"
        )
        start = end
    body = (
        '<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">'
        "<mRID>x</mRID><type>A44</type><TimeSeries><in_Domain.mRID>10YNL----------L</in_Domain.mRID>"
        f"<curveType>A03</curveType>{''.join(periods)}</TimeSeries></Publication_MarketDocument>"
    ).encode()
    assert len(body) < 20_000 and MAX_SLOTS < 29 * 366 * 96
    e = refused(body)
    assert e.field_path.startswith("TimeSeries[0].Period[") and str(MAX_SLOTS) in e.problem


# --- what the parser remembers between documents (times, resolutions, tags) ---------------------


def test_a_bad_time_or_resolution_is_refused_every_time_it_comes() -> None:
    # Times and resolutions are parsed once per distinct text and remembered: a refusal must not be.
    bad_time = once(
        A44,
        b"<start>2024-10-05T22:00Z</start>\n              <end>",
        b"<start>2024-13-05T22:00Z</start>\n              <end>",
    )
    bad_resolution = once(A44, b"<resolution>PT60M</resolution>", b"<resolution>PT0M</resolution>")
    for _ in range(2):
        assert refused(bad_time, "time.xml").field_path == "TimeSeries[0].Period[0].timeInterval.start"
        assert refused(bad_resolution, "res.xml").field_path == "TimeSeries[0].Period[0].resolution"
        assert parse_document(A44, "fine.xml").prices  # and the good spellings still read as before


def test_malformed_xml_mid_points_names_the_document_and_the_line() -> None:
    # A Point's closing tag misspelled in the middle of the first Period (line 39 of the file).
    body = once(
        A44,
        b"<price.amount>63.97</price.amount>\n              </Point>",
        b"<price.amount>63.97</price.amount>\n              </Pont>",
    )
    e = refused(body, "mid.xml")
    assert e.field_path == "(document)" and "malformed XML: mismatched tag: line 39" in e.problem
