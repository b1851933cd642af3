"""The plain reading of ENTSO-E A44 documents (services.market.entsoe_plain, no element tree) agrees
with the tree: every document it reads gives the very MarketDocument the tree gives (values compared
by repr, so -0.0 and 0.0 differ), and for any other input, a document of another layout, one with
something to refuse, malformed XML, parse_document's outcome is the tree's, error message included.
Documents are generated in the layouts the platform writes and then mutated at random."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.market import DocumentError, MarketDocument, entsoe_plain, entsoe_xml
from services.market.documents import parse_document, parse_xml_document
from services.market.entsoe_xml import parse_plain_entsoe

DATA = Path(__file__).parent / "data"
NAMESPACE = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
ZONES = ("10Y1001A1001A82H", "10YFR-RTE------C", "10YES-REE------0")
BASE = datetime(2025, 3, 29, 23, tzinfo=UTC)


def snapshot(doc: MarketDocument) -> object:
    """Everything a MarketDocument holds, floats by repr (== would take -0.0 for 0.0, 1 for 1.0)."""
    prices = [
        (
            p.zone,
            p.product,
            p.resolution,
            p.auction,
            p.sequence,
            p.geography,
            p.currency,
            p.unit,
            [(s.start, repr(s.value), type(s.value)) for s in p.slots],
        )
        for p in doc.prices
    ]
    return (doc.source, doc.kind, doc.document_id, doc.revision, doc.created_at, doc.interval, prices, doc.flows)


def outcome(read: Callable[[bytes, str], MarketDocument], data: bytes) -> tuple[str, object]:
    try:
        return ("read", snapshot(read(data, "doc.xml")))
    except DocumentError as exc:
        return ("refused", str(exc))


def _utc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


values = st.one_of(
    st.floats(min_value=-500, max_value=4000, allow_nan=False).map(repr),
    st.floats(min_value=-500, max_value=4000, allow_nan=False).map(lambda v: f"{v:g}"),
    st.integers(-500, 4000).map(str),
    st.sampled_from(["-0", "0.0", "-0.0", "1e3", "1E-2", "+7.5", " 12.5 ", "\t3\n"]),
)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """An A44 document as the platform lays them out, its indentation, optional fields, attributes,
    series, Periods, resolutions, curve types and number spellings drawn."""
    indent = draw(st.sampled_from(["", "\n", "\n  ", "\n\t", " \n    "]))

    def nl(depth: int) -> str:
        return indent + indent[1:] * depth if indent.startswith(("\n", " \n")) else indent

    def field(name: str, value: str, depth: int, attribute: str = "") -> str:
        return f"{nl(depth)}<{name}{attribute}>{value}</{name}>"

    series = []
    for t in range(draw(st.integers(1, 3))):
        curve = draw(st.sampled_from(["A01", "A03", ""]))
        contract = draw(st.sampled_from(["A01", "A07", ""]))
        zone = draw(st.sampled_from(ZONES))
        fields = [field("mRID", str(t + 1), 2), field("businessType", "A62", 2)]
        fields.append(field("in_Domain.mRID", zone, 2, draw(st.sampled_from(["", ' codingScheme="A01"']))))
        fields.append(field("out_Domain.mRID", zone, 2, ' codingScheme="A01"'))
        if contract:
            fields.append(field("contract_MarketAgreement.type", contract, 2))
        if contract == "A07":
            fields.append(field("auction.mRID", draw(st.sampled_from(["IDA1", "IDA2", "3", "x"])), 2))
        if draw(st.booleans()):
            fields += [field("currency_Unit.name", "EUR", 2), field("price_Measure_Unit.name", "MWH", 2)]
        if draw(st.booleans()):
            fields.append(field("classificationSequence_AttributeInstanceComponent.position", str(t + 1), 2))
        if curve:
            fields.append(field("curveType", curve, 2))
        periods = []
        start = BASE + draw(st.integers(0, 3)) * timedelta(hours=1)
        for _ in range(draw(st.integers(1, 3))):
            minutes = draw(st.sampled_from([15, 30, 60]))
            count = draw(st.integers(1, 30))
            end = start + count * timedelta(minutes=minutes)
            given = sorted(draw(st.sets(st.integers(1, count), min_size=1)))
            if curve == "A03" and draw(st.integers(0, 9)):
                given = sorted({1, *given})  # A03 starts at position 1 (but not always, to see it refused)
            points = "".join(
                f"{nl(3)}<Point>{field('position', str(p), 4)}{field('price.amount', draw(values), 4)}{nl(3)}</Point>"
                for p in given
            )
            resolution = draw(st.sampled_from([f"PT{minutes}M", "PT1H" if minutes == 60 else f"PT{minutes}M"]))
            periods.append(
                f"{nl(2)}<Period>{nl(3)}<timeInterval>{field('start', _utc(start), 4)}{field('end', _utc(end), 4)}"
                f"{nl(3)}</timeInterval>{field('resolution', resolution, 3)}{points}{nl(2)}</Period>"
            )
            start = end + draw(st.sampled_from([0, 0, 60])) * timedelta(minutes=1)
        series.append(f"{nl(1)}<TimeSeries>{''.join(fields)}{''.join(periods)}{nl(1)}</TimeSeries>")
    head = [field("mRID", draw(st.sampled_from(["a1b2", " spaced ", "x"])), 1)]
    if draw(st.booleans()):
        head.append(field("revisionNumber", draw(st.sampled_from(["1", "2", "007"])), 1))
    head.append(field("type", "A44", 1))
    head.append(field("sender_MarketParticipant.mRID", "10X1001A1001A450", 1, ' codingScheme="A01"'))
    if draw(st.booleans()):
        head.append(field("createdDateTime", "2025-03-28T11:50:00Z", 1))
    if draw(st.booleans()):
        head.append(
            f"{nl(1)}<period.timeInterval>{field('start', _utc(BASE), 2)}{field('end', _utc(BASE), 2)}"
            f"{nl(1)}</period.timeInterval>"
        )
    declaration = draw(st.sampled_from(['<?xml version="1.0" encoding="utf-8"?>', '<?xml version="1.0"?>', ""]))
    return (
        f'{declaration}{indent}<Publication_MarketDocument xmlns="{NAMESPACE}">'
        f"{''.join(head)}{''.join(series)}{nl(0)}</Publication_MarketDocument>{indent}"
    ).encode()


# Bits of XML and of what is not XML, inserted at random into generated documents.
SNIPPETS = [
    "<!-- note -->", "&amp;", "&#65;", "&lt;", "<![CDATA[1]]>", "\r\n", "\r", "\t", " ", "\n", "<x/>",
    "<x>1</x>", "<x><y>1</y></x>", "<?pi x?>", "</Point>", "<Point>", "<Period>", "</Period>",
    "<TimeSeries>", "</TimeSeries>", "<", ">", "&", '"', "\x00", "\x0b", "\x1f", "\u00e9", "\ufeff",
    ' a="1"', ' a="1" b="2"', ' xmlns="urn:x"', f' xmlns:p="{NAMESPACE}"', "p:", "<!DOCTYPE x>",
    '<!DOCTYPE x [<!ENTITY e "v">]>', "<type>A44</type>", "<mRID>other</mRID>", "<position>1</position>",
    "<price.amount>1</price.amount>", "<curveType>A03</curveType>", "9", "-", ".", "]]>",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = draw(documents()).decode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "copy"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        else:
            to = min(len(text), at + draw(st.integers(1, 40)))
            text = text[:at] + (text[at:to] * 2 if kind == "copy" else "") + text[to:]
    return text.encode()


@settings(max_examples=300, deadline=None)
@given(documents())
def test_generated_documents_read_plainly_as_the_tree_reads_them(data: bytes) -> None:
    tree = outcome(parse_xml_document, data)
    plain = parse_plain_entsoe(data, "doc.xml")
    # Every layout drawn is plain: what the tree reads, the plain reading reads too (the rest, such as
    # an A03 curve without position 1, is refused by the tree's words).
    assert (plain is not None) == (tree[0] == "read")
    if plain is not None:
        assert ("read", snapshot(plain)) == tree
    assert outcome(parse_document, data) == tree


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_any_change_to_a_document_reads_or_is_refused_as_through_the_tree(data: bytes) -> None:
    # parse_document takes what starts with "<" (after a BOM and whitespace) for XML; the rest is
    # JSON or nothing, whichever way XML is read.
    assume(data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<")
    assert outcome(parse_document, data) == outcome(parse_xml_document, data)


def test_the_platforms_documents_are_read_plainly() -> None:
    """The Transparency Platform's own A44 documents in data/ take the plain reading, to the same
    MarketDocument as through the tree."""
    names = sorted(path.name for path in DATA.glob("*A44*.xml"))
    assert len(names) == 7
    for name in names:
        data = (DATA / name).read_bytes()
        read = parse_plain_entsoe(data, name)
        assert read is not None, name
        assert snapshot(read) == snapshot(parse_xml_document(data, name))


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("a comment", "<type>", "<!-- A44 --><type>"),
        ("a character reference", "<mRID>1</mRID>", "<mRID>&#49;</mRID>"),
        ("CR LF line ends", "\n", "\r\n"),
        ("a namespace prefix", "Point>", "p:Point>"),
        ("a DTD", "<Publication_MarketDocument", "<!DOCTYPE x><Publication_MarketDocument"),
        ("an empty element", "<businessType>A62</businessType>", "<businessType/>"),
        ("a Point without a position", "<position>1</position>", ""),
        ("a position with spaces", "<position>1</position>", "<position> 1 </position>"),
        ("a text that is not ASCII", "<mRID>1</mRID>", "<mRID>\u00e9</mRID>"),
        ("an A11 document", "<type>A44</type>", "<type>A11</type>"),
        ("a second attribute", ' codingScheme="A01"', ' codingScheme="A01" a="b"'),
    ],
)
def test_other_layouts_go_through_the_tree(name: str, old: str, new: str) -> None:
    original = (DATA / "derived_A44_FR_2024-10-07_dayahead.xml").read_text()
    assert old in original, name
    data = original.replace(old, new).encode()
    assert entsoe_plain.plain_document(data) is None or parse_plain_entsoe(data, "doc.xml") is None
    assert outcome(parse_document, data) == outcome(parse_xml_document, data)


def test_the_namespace_prefix_is_the_trees() -> None:
    assert entsoe_plain.NAMESPACE_PREFIX == entsoe_xml._NAMESPACE_PREFIX
