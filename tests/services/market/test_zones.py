"""The bidding-zone table: every listed code is a valid EIC, and a code that is not one is refused."""

from __future__ import annotations

import pytest

from services.market import DocumentError
from services.market.zones import BIDDING_ZONES, ES_PENINSULA, checked_zone, is_eic, zone_name

REQUIRED = {"DE-LU", "FR", "ES", "PT", "NL", "BE", "AT", "CH", "IT-North", "PL", "CZ", "DK1", "DK2", "FI"}
REQUIRED |= {f"NO{i}" for i in range(1, 6)} | {f"SE{i}" for i in range(1, 5)}


def test_the_required_zones_are_listed_with_valid_codes() -> None:
    names = {short for short, _ in BIDDING_ZONES.values()}
    assert names >= REQUIRED
    assert len(names) == len(BIDDING_ZONES)  # no short name twice
    assert [code for code in BIDDING_ZONES if not is_eic(code)] == []


def test_known_codes_by_hand() -> None:
    # Codes as ENTSO-E publishes them (the real documents in data/ name DE-LU's).
    assert zone_name("10Y1001A1001A82H") == "DE-LU"
    assert zone_name("10YDK-1--------W") == "DK1"
    assert zone_name("10Y1001A1001A48H") == "NO5"
    assert zone_name(ES_PENINSULA) == "ES"
    # A valid EIC that is not a bidding zone (the 50Hertz control area) is kept, named by its code.
    assert is_eic("10YDE-VE-------2") and zone_name("10YDE-VE-------2") == "10YDE-VE-------2"


@pytest.mark.parametrize(
    "code",
    ["10Y1001A1001A82X", "10y1001a1001a82h", "10Y1001A1001A82", "10Y1001A1001A82HH", "DE-LU", "", "10Y1001A1001A8 H"],
)
def test_not_an_eic_is_a_document_error(code: str) -> None:
    assert not is_eic(code)
    with pytest.raises(DocumentError) as caught:
        checked_zone(code, "doc.xml", "TimeSeries[0].in_Domain.mRID")
    assert (caught.value.document, caught.value.field_path) == ("doc.xml", "TimeSeries[0].in_Domain.mRID")
