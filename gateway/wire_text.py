"""The JSON text of an answer from its bytes, the elements of its repeated message fields remembered.

Consecutive answers of one route mostly repeat their elements: fifty dashboards polling a site get
fifty latest values of which few changed since the last read, and only `read_time` differs between
two reads of a quiet site. Printing every element again was a fifth of the gateway's event loop
(docs/performance.md, session 14). An element's text is a function of its bytes alone (the element
type's printer applied to the message the bytes encode), so each repeated message field's elements
are cut out of the answer's wire bytes (the top level only: tag, length, slice) and an element whose
bytes were printed before gets that text; the others are printed from the parsed answer as before,
and the answer's own fields around them by the type's printer (json_text.given_json). The body is
byte for byte what json_text.message_json prints: the element texts are the same functions of the
same elements, in the same order (a repeated field's elements are parsed in wire order).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor as d

from gateway.json_text import Printer, element_printer, given_json, repeated_message_fields

# Elements remembered per element type; past this the memo starts again (a site of thousands of
# channels prints them anew, as before), so memory stays a few megabytes whatever the answers hold.
MAX_REMEMBERED_ELEMENTS = 4096
# A larger element (a message with long lists of its own) is printed anew each time.
MAX_ELEMENT_BYTES = 512

_LENGTH_DELIMITED = 2


def _varint_rest(data: bytes, i: int, end: int, first: int) -> tuple[int, int]:
    """The varint whose first byte `first` (continuation bit set) was read, and the index after it;
    index -1 when it runs past the end or past 64 bits."""
    value = first & 0x7F
    shift = 7
    while True:
        if i >= end or shift > 63:
            return 0, -1
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def element_slices(data: bytes, numbers: frozenset[int]) -> dict[int, list[bytes]] | None:
    """The bytes of each length-delimited record of the fields `numbers` at the top level of `data`, in
    wire order; None for anything that is not plain proto3 wire (a group, a bad wire type, a record
    running past the end, one of `numbers` not length-delimited): the caller then prints as before."""
    found: dict[int, list[bytes]] = {n: [] for n in numbers}
    i, end = 0, len(data)
    while i < end:
        key = data[i]
        i += 1
        if key & 0x80:  # the one-byte case stays inline: nearly every key and length is one byte
            key, i = _varint_rest(data, i, end, key)
            if i < 0:
                return None
        wire = key & 7
        if wire == _LENGTH_DELIMITED:
            if i >= end:
                return None
            length = data[i]
            i += 1
            if length & 0x80:
                length, i = _varint_rest(data, i, end, length)
                if i < 0:
                    return None
            if i + length > end:
                return None
            records = found.get(key >> 3)
            if records is not None:
                records.append(data[i : i + length])
            i += length
        elif (key >> 3) in found:
            return None
        elif wire == 0:
            while True:
                if i >= end:
                    return None
                b = data[i]
                i += 1
                if not b & 0x80:
                    break
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            return None
    if i != end:
        return None
    return found


class _Fields:
    """What the memo needs of one answer type: its repeated message fields and their element printers."""

    def __init__(self, descriptor: d.Descriptor) -> None:
        fields = repeated_message_fields(descriptor)
        self.numbers = frozenset(f.number for f in fields)
        # (number, attribute name, element printer, the element type's memo)
        self.fields: list[tuple[int, str, Printer, dict[bytes, str]]] = [
            (f.number, f.name, element_printer(f), {}) for f in fields
        ]


class ElementTexts:
    """The JSON text of answers, each element of a repeated message field printed once per bytes."""

    def __init__(self, max_elements: int = MAX_REMEMBERED_ELEMENTS, max_element_bytes: int = MAX_ELEMENT_BYTES) -> None:
        self._max_elements = max_elements
        self._max_element_bytes = max_element_bytes
        self._types: dict[str, _Fields] = {}

    def json(self, message: Any, data: bytes) -> str | None:
        """message_json(message) for `message` parsed from `data`; None when the answer's type has no
        repeated message field or its bytes are not plain wire (the caller prints it as before).
        Raises Unprintable as message_json does."""
        descriptor = message.DESCRIPTOR
        kind = self._types.get(descriptor.full_name)
        if kind is None:
            kind = self._types[descriptor.full_name] = _Fields(descriptor)
        if not kind.fields:
            return None
        slices = element_slices(data, kind.numbers)
        if slices is None:
            return None
        texts: dict[int, str] = {}
        for number, name, printer, memo in kind.fields:
            records = slices[number]
            parsed = getattr(message, name)
            if len(parsed) != len(records):
                return None  # not the elements the bytes hold: never a text of other elements
            if not records:
                continue
            if len(memo) + len(records) > self._max_elements:
                memo.clear()  # start again rather than track which texts are old
            out = []
            for i, record in enumerate(records):
                text = memo.get(record)
                if text is None:
                    text = printer(parsed[i])
                    if len(record) <= self._max_element_bytes and len(memo) < self._max_elements:
                        memo[record] = text
                out.append(text)
            texts[number] = ",".join(out)
        return given_json(message, texts)

    def remembered(self) -> int:
        """How many element texts are remembered (for tests)."""
        return sum(len(memo) for kind in self._types.values() for _, _, _, memo in kind.fields)


__all__ = ["MAX_ELEMENT_BYTES", "MAX_REMEMBERED_ELEMENTS", "ElementTexts", "element_slices"]
