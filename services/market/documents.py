"""The one entry point for a market document of any source: detect what it is, parse it, or raise a
DocumentError that names the document and the field."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from services.market.entsoe_xml import is_entsoe, parse_entsoe, parse_plain_entsoe, parse_xml
from services.market.model import DocumentError, MarketDocument
from services.market.ree_json import error_body, parse_esios, parse_json, parse_redata

# The largest document accepted: a year of 15-minute prices for one zone is ~3 MB of ENTSO-E XML.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024


def parse_document(data: bytes, name: str) -> MarketDocument:
    """The normalised content of `data`; `name` (a file name, a URL) is what errors call it by.

    ENTSO-E XML is told by its root element and IEC 62325-451 namespace; REE JSON by its top-level
    keys (REData: data + included; ESIOS: indicator; an error body: errors or message).
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(name, "(document)", f"{len(data)} bytes is more than {MAX_DOCUMENT_BYTES}")
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        # Most documents are plainly laid-out A44 prices, read without a tree (the same MarketDocument,
        # a third of the time); the rest, and every document with something to refuse, go through one.
        return parse_plain_entsoe(data, name) or parse_xml_document(data, name)
    if head in (b"{", b"["):
        body = parse_json(data, name)
        if not isinstance(body, Mapping):
            raise DocumentError(name, "(document)", "a JSON document that is not an object")
        refused = error_body(body, name)
        if refused is not None:
            raise refused
        if "indicator" in body:
            return parse_esios(body, name)
        if "included" in body and "data" in body:
            return parse_redata(body, name)
        keys = ", ".join(sorted(str(k)[:30] for k in body)[:10])
        raise DocumentError(name, "(document)", f"unknown JSON document (keys: {keys})")
    raise DocumentError(name, "(document)", "neither XML nor JSON" if data.strip() else "empty")


def parse_xml_document(data: bytes, name: str) -> MarketDocument:
    """An XML document read through its element tree: any ENTSO-E document EMMA reads, and the words
    for whatever is refused."""
    root = parse_xml(data, name)
    if not is_entsoe(root):
        raise DocumentError(name, "(root)", f"{root.tag[:80]!r} is not an ENTSO-E (IEC 62325-451) document")
    return parse_entsoe(root, name)


async def parse_documents(named: Iterable[tuple[str, bytes]]) -> list[MarketDocument]:
    """`parse_document` of each (name, data) in order, giving the event loop a turn after each one.

    A fetch can hold many documents (~0.05-0.1 ms each to parse). Parsed in one go they hold the loop for
    the whole fetch, so a save already in flight (the previous batch's, another job's) gets no turn to
    read PostgreSQL's answer and send its next statement until the last document is parsed:
    the database waits for the parser instead of writing while it parses (docs/market.md, "Session
    12": the two-process backfill of the market benchmark stored ~30 % more rows/s with this). The
    first DocumentError ends it."""
    out: list[MarketDocument] = []
    for name, data in named:
        out.append(parse_document(data, name))
        await asyncio.sleep(0)
    return out
