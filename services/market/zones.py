"""European bidding zones by EIC code (the Energy Identification Code ENTSO-E documents name them by),
with the short names people use, and the geographies REE publishes the Spanish PVPC for.

A document may name a valid EIC that is not listed here (a control area, a new zone): it is kept as
published, and its readable name is the code itself. A code that is not an EIC at all is refused.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from services.market.model import DocumentError

# EIC -> (short name, readable name). Bidding zones as ENTSO-E's Transparency Platform lists them.
BIDDING_ZONES: Final[dict[str, tuple[str, str]]] = {
    "10Y1001A1001A82H": ("DE-LU", "Germany-Luxembourg"),
    "10YFR-RTE------C": ("FR", "France"),
    "10YES-REE------0": ("ES", "Spain (REE, peninsular system)"),
    "10YPT-REN------W": ("PT", "Portugal"),
    "10YNL----------L": ("NL", "Netherlands"),
    "10YBE----------2": ("BE", "Belgium"),
    "10YAT-APG------L": ("AT", "Austria"),
    "10YCH-SWISSGRIDZ": ("CH", "Switzerland"),
    "10Y1001A1001A73I": ("IT-North", "Italy North"),
    "10Y1001A1001A70O": ("IT-Centre-North", "Italy Centre-North"),
    "10Y1001A1001A71M": ("IT-Centre-South", "Italy Centre-South"),
    "10Y1001A1001A788": ("IT-South", "Italy South"),
    "10Y1001C--00096J": ("IT-Calabria", "Italy Calabria"),
    "10Y1001A1001A75E": ("IT-Sicily", "Italy Sicily"),
    "10Y1001A1001A74G": ("IT-Sardinia", "Italy Sardinia"),
    "10YPL-AREA-----S": ("PL", "Poland"),
    "10YCZ-CEPS-----N": ("CZ", "Czech Republic"),
    "10YSK-SEPS-----K": ("SK", "Slovakia"),
    "10YHU-MAVIR----U": ("HU", "Hungary"),
    "10YSI-ELES-----O": ("SI", "Slovenia"),
    "10YHR-HEP------M": ("HR", "Croatia"),
    "10YRO-TEL------P": ("RO", "Romania"),
    "10YCA-BULGARIA-R": ("BG", "Bulgaria"),
    "10YGR-HTSO-----Y": ("GR", "Greece"),
    "10YDK-1--------W": ("DK1", "Denmark West"),
    "10YDK-2--------M": ("DK2", "Denmark East"),
    "10YNO-1--------2": ("NO1", "Norway South-East (Oslo)"),
    "10YNO-2--------T": ("NO2", "Norway South-West (Kristiansand)"),
    "10YNO-3--------J": ("NO3", "Norway Central (Trondheim)"),
    "10YNO-4--------9": ("NO4", "Norway North (Tromsø)"),
    "10Y1001A1001A48H": ("NO5", "Norway West (Bergen)"),
    "10Y1001A1001A44P": ("SE1", "Sweden North (Luleå)"),
    "10Y1001A1001A45N": ("SE2", "Sweden North-Central (Sundsvall)"),
    "10Y1001A1001A46L": ("SE3", "Sweden South-Central (Stockholm)"),
    "10Y1001A1001A47J": ("SE4", "Sweden South (Malmö)"),
    "10YFI-1--------U": ("FI", "Finland"),
    "10Y1001A1001A39I": ("EE", "Estonia"),
    "10YLV-1001A00074": ("LV", "Latvia"),
    "10YLT-1001A0008Q": ("LT", "Lithuania"),
    # The rest of Europe's bidding zones ENTSO-E lists ("BZ"): Ireland's single market, Great Britain
    # (outside the EU's market coupling since 2021), South-East Europe, the islands, Ukraine, Moldova.
    "10Y1001A1001A59C": ("IE-SEM", "Ireland and Northern Ireland (SEM)"),
    "10YGB----------A": ("GB", "Great Britain"),
    "10YCS-CG-TSO---S": ("ME", "Montenegro"),
    "10YCS-SERBIATSOV": ("RS", "Serbia"),
    "10YMK-MEPSO----8": ("MK", "North Macedonia"),
    "10YBA-JPCC-----D": ("BA", "Bosnia and Herzegovina"),
    "10YAL-KESH-----5": ("AL", "Albania"),
    "10Y1001C--00100H": ("XK", "Kosovo"),
    "10Y1001A1001A93C": ("MT", "Malta"),
    "10YCY-1001A0003J": ("CY", "Cyprus"),
    "10Y1001C--00003F": ("UA", "Ukraine (IPS)"),
    "10Y1001A1001A990": ("MD", "Moldova"),
}

# The zone REE's prices belong to: the Spanish peninsular system is the ES bidding zone.
ES_PENINSULA: Final = "10YES-REE------0"

# REE's geographies (ESIOS geo_id) PVPC is published for; REData's peninsular prices are 8741.
REE_GEOGRAPHIES: Final[dict[str, str]] = {
    "8741": "Península",
    "8742": "Canarias",
    "8743": "Baleares",
    "8744": "Ceuta",
    "8745": "Melilla",
}

_EIC = re.compile(r"[0-9A-Z][0-9A-Z][0-9A-Z-]{13}[0-9A-Z-]")
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-"


def eic_check_character(first15: str) -> str:
    """The 16th character of an EIC: ENTSO-E's weighted modulo-37 check over the first fifteen."""
    total = sum(_ALPHABET.index(c) * (16 - i) for i, c in enumerate(first15))
    return _ALPHABET[36 - (total - 1) % 37]


@functools.lru_cache(maxsize=4096)  # every document names the same few zones again
def is_eic(code: str) -> bool:
    """16 characters of 0-9, A-Z and '-' whose last is the check character of the others."""
    return _EIC.fullmatch(code) is not None and code[15] == eic_check_character(code[:15])


def zone_name(code: str) -> str:
    """The short name of a bidding zone ("DE-LU"), or the code itself if it is not listed."""
    known = BIDDING_ZONES.get(code)
    return known[0] if known else code


def checked_zone(code: str, document: str, field_path: str) -> str:
    """`code` if it is an EIC, else a DocumentError naming the document and the field."""
    if not is_eic(code):
        shown = code if len(code) <= 40 else code[:40] + "..."
        raise DocumentError(document, field_path, f"{shown!r} is not an EIC code")
    return code
