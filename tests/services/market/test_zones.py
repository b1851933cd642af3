"""The bidding-zone table: every listed code is a valid EIC, and a code that is not one is refused."""

from __future__ import annotations

import pytest

from services.market import DocumentError
from services.market.summary import zone_timezone
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


# Europe's bidding zones beyond the SDAC core, as ENTSO-E's Transparency Platform codes them ("BZ" areas;
# control areas and the virtual Italian and interconnector zones are not bidding zones of their own).
OTHER_EUROPEAN_ZONES = {
    "10Y1001A1001A59C": "IE-SEM",
    "10YGB----------A": "GB",
    "10YCS-CG-TSO---S": "ME",
    "10YCS-SERBIATSOV": "RS",
    "10YMK-MEPSO----8": "MK",
    "10YBA-JPCC-----D": "BA",
    "10YAL-KESH-----5": "AL",
    "10Y1001C--00100H": "XK",
    "10Y1001A1001A93C": "MT",
    "10YCY-1001A0003J": "CY",
    "10Y1001C--00003F": "UA",
    "10Y1001A1001A990": "MD",
}


def test_every_european_bidding_zone_is_listed_with_its_local_day() -> None:
    assert {code: zone_name(code) for code in OTHER_EUROPEAN_ZONES} == OTHER_EUROPEAN_ZONES
    assert all(is_eic(code) for code in OTHER_EUROPEAN_ZONES)
    assert zone_timezone("10Y1001A1001A59C").key == "Europe/Dublin"
    assert zone_timezone("10YGB----------A").key == "Europe/London"
    assert zone_timezone("10YCY-1001A0003J").key == "Europe/Nicosia"
