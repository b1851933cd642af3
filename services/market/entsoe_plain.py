"""ENTSO-E A44 documents laid out plainly, read without building an element tree.

The Transparency Platform writes every price document the same way: ASCII, the default namespace on
the root, elements that hold either text or other elements, no comments, entities, CDATA or
processing instructions. Building a tree of such a document (the C ElementTree, an Element per field
and per Point) was half of parsing it, and walking the tree most of the rest (docs/market.md,
"Session 13"). Here one regular expression checks that the whole document is in that narrow subset
of XML, in which the text between tags is exactly what a tree's `.text` would hold, and string
splits pick the fields out; entsoe_xml's walk then reads them with the same checks as a tree's.

Anything outside the subset (another encoding or character, a namespace prefix, an entity or a
character reference, a comment, an empty-element tag, a Point that is not exactly a position then a
price, a second attribute) is not read here: `plain_document` answers None and the document goes
through the tree, which also gives every error its words. A document the subset accepts is
well-formed XML without a DTD, so it holds nothing that entsoe_xml.parse_xml would refuse.
"""

from __future__ import annotations

import re
from typing import NamedTuple, cast

# Kept in step with entsoe_xml._NAMESPACE_PREFIX (a test compares them).
NAMESPACE_PREFIX = "urn:iec62325.351:tc57wg16:451-"
ROOT = "Publication_MarketDocument"
VALUE_FIELD = "price.amount"

_S = r"[ \t\n]*"  # whitespace between elements; a carriage return (which XML rewrites) is not read here
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"  # no colon: no namespace prefix
# At most one attribute (so never a repeated one), and none that declares a namespace.
_ATTRIBUTE = rf'(?: (?!xmlns){_NAME}="[^"<&\x00-\x08\x0b-\x1f]*")?'
# Text without markup, entity or character reference, or a character XML forbids or rewrites (the
# document is ASCII: C0 controls other than tab and line feed are all there is to leave out).
_TEXT = r"[^<>&\x00-\x08\x0b-\x1f]*"


def _leaf(group: str, reserved: str = "", text: str = _TEXT) -> str:
    """An element holding only text, whose name is not one of `reserved` (a regex alternation)."""
    guard = rf"(?!(?:{reserved})[ >])" if reserved else ""
    return rf"<{guard}(?P<{group}>{_NAME}){_ATTRIBUTE}>{text}</(?P={group})>"


# The document is read in steps, each a regular expression matched where the last one ended, so the
# steps together cover every character of it. The repeated parts (a root's fields, a TimeSeries'
# fields, a Period's Points) are read with Pattern.split, whose every match gives that child's texts
# and whose gaps between matches must be empty: the children follow one another with nothing else.
# Each child's pattern starts with "<" and takes the whitespace after it, never before: a search
# (which split is) then tries a match only where a "<" is, and a long run of whitespace costs it one
# pass, not one per character (a pattern starting with whitespace made that quadratic).
# Every pattern is deterministic: at each character at most one way on, so none backtracks far.
_START = re.compile(
    r'(?:<\?xml version="1\.0"(?: encoding="(?:utf|UTF)-8")?\?>)?'
    rf'{_S}<{ROOT} xmlns="({re.escape(NAMESPACE_PREFIX)}[^"<&\x00-\x20]*)">{_S}'
)
# The fields the walk reads of the root: as elements holding text, never as ones holding elements
# (whose tree text would be the whitespace before the first child).
_ROOT_READ = r"type|mRID|revisionNumber|createdDateTime|TimeSeries"
# A root field: (name, text) of one holding text, else (None, None) of one holding elements that
# hold text (period.timeInterval). Never a TimeSeries.
_ROOT_FIELD = re.compile(
    rf"(?:{_leaf('n', 'TimeSeries', f'({_TEXT})')}"
    rf"|<(?!(?:{_ROOT_READ})[ >])(?P<c>{_NAME}){_ATTRIBUTE}>{_S}(?:{_leaf('i')}{_S})*</(?P=c)>){_S}"
)
_ROOT_FIELD_GROUPS = 5  # a split gives the gap, then n, the text, c and i of each match
# A TimeSeries' field: (name, text). None is called Period or TimeSeries, so that finding those tags
# finds the elements.
_SERIES_FIELD = re.compile(rf"{_leaf('n', 'Period|TimeSeries', f'({_TEXT})')}{_S}")
_SERIES_FIELD_GROUPS = 3
_PERIOD_HEAD = re.compile(
    rf"<Period>{_S}<timeInterval>{_S}<start>({_TEXT})</start>{_S}<end>({_TEXT})</end>{_S}</timeInterval>"
    rf"{_S}<resolution>({_TEXT})</resolution>{_S}"
)
_POINT = re.compile(
    rf"<Point>{_S}<position>({_TEXT})</position>{_S}<price\.amount>({_TEXT})</price\.amount>{_S}</Point>{_S}"
)
_POINT_GROUPS = 3
_NEXT_PERIOD = re.compile(rf"</Period>{_S}(?:(<Period>)|</TimeSeries>{_S})")
_NEXT_SERIES = re.compile(rf"(<TimeSeries>)|</{ROOT}>{_S}\Z")

Texts = dict[str, str]  # an element's text-only children by name, the first of a name winning


class PlainPeriod(NamedTuple):
    times: Texts  # the timeInterval's start and end
    resolution: str
    positions: list[str]  # each Point's position and price, as written
    values: list[str]


class PlainSeries(NamedTuple):
    fields: Texts
    periods: list[PlainPeriod]


class PlainDocument(NamedTuple):
    namespace: str
    head: Texts
    series: list[PlainSeries]


def _children(pattern: re.Pattern[str], groups: int, part: str) -> list[str | None] | None:
    """`part` split by `pattern` (gap, groups..., gap, ...), when its matches follow one another from
    its start to its end (every gap empty); None otherwise."""
    pieces: list[str | None] = pattern.split(part)
    if any(pieces[::groups]):
        return None
    return pieces


def _texts(pieces: list[str | None], groups: int) -> Texts:
    """The (name, text) pairs of split pieces as a dict, the first of a name winning (as find() does)."""
    # Last to first, so that the first of a name is the one left; None names a field holding elements.
    texts = dict(zip(pieces[-groups::-groups], pieces[1 - groups :: -groups], strict=True))
    texts.pop(None, None)
    return cast(Texts, texts)


def plain_document(data: bytes) -> PlainDocument | None:
    """The fields of a plainly laid-out ENTSO-E Publication document, or None when it is not one."""
    if not data.isascii():
        return None
    text = data.decode("ascii")
    start = _START.match(text)
    if start is None:
        return None
    at = text.find("<TimeSeries>", start.end())
    if at < 0:
        return None
    head = _children(_ROOT_FIELD, _ROOT_FIELD_GROUPS, text[start.end() : at])
    if head is None:
        return None
    series = []
    while True:  # at: a <TimeSeries> tag
        period = text.find("<Period>", at)
        fields = _children(_SERIES_FIELD, _SERIES_FIELD_GROUPS, text[at + len("<TimeSeries>") : period].lstrip(" \t\n"))
        if period < 0 or fields is None:
            return None
        periods = []
        while True:  # period: a <Period> tag
            times = _PERIOD_HEAD.match(text, period)
            stop = text.find("</Period>", period)
            if times is None or stop < 0:
                return None
            points = _children(_POINT, _POINT_GROUPS, text[times.end() : stop])
            if points is None or len(points) == 1:
                return None
            begin, end, resolution = times.groups()
            periods.append(
                PlainPeriod(
                    {"start": cast(str, begin), "end": cast(str, end)},
                    cast(str, resolution),
                    cast(list[str], points[1::_POINT_GROUPS]),
                    cast(list[str], points[2::_POINT_GROUPS]),
                )
            )
            after = _NEXT_PERIOD.match(text, stop)
            if after is None:
                return None
            if after[1] is None:
                break
            period = after.start(1)
        series.append(PlainSeries(_texts(fields, _SERIES_FIELD_GROUPS), periods))
        after = _NEXT_SERIES.match(text, after.end())
        if after is None:
            return None
        if after[1] is None:
            return PlainDocument(start[1], _texts(head, _ROOT_FIELD_GROUPS), series)
        at = after.start(1)
