"""The limits a contract's comment states, read so the OpenAPI document can carry them as schema keywords.

A generated client knows only what the document says; a limit the server enforces but the document
does not state makes clients send requests the server refuses. The contracts therefore state their
limits in the leading comment of the field (or oneof) in one small syntax, documented in
docs/contracts.md:

    [limits: CONSTRAINT; CONSTRAINT ...]

    MIN..MAX          a number's minimum and maximum (either may be left out: `0..`, `..1000`); on a
                      google.protobuf.Duration the bounds are seconds written like its JSON, `60s..86400s`
    length MIN..MAX   a string's length in characters (each item's, for a repeated string)
    items MIN..MAX    how many items a repeated field holds
    required          on a oneof: exactly one of its fields must be set

A malformed tag is an error when the document is built, so a typo cannot silently drop a limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import GatewayError

_TAG = re.compile(r"\s*\[limits:\s*([^\]]*)\]")
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_RANGE = re.compile(rf"^(?P<lo>{_NUMBER}s?)?\.\.(?P<hi>{_NUMBER}s?)?$")


class LimitsSyntaxError(GatewayError):
    """A `[limits: ...]` tag in a contract's comment does not follow the syntax."""


@dataclass(frozen=True)
class Range:
    """Inclusive bounds; None where the tag leaves a side open. `seconds`: written with an "s" (Durations)."""

    minimum: float | None = None
    maximum: float | None = None
    seconds: bool = False

    def text(self) -> str:
        unit = "s" if self.seconds else ""
        if self.minimum is not None and self.maximum is not None:
            return f"from {_num(self.minimum)}{unit} to {_num(self.maximum)}{unit}"
        if self.minimum is not None:
            return f"at least {_num(self.minimum)}{unit}"
        return f"at most {_num(self.maximum or 0)}{unit}"


@dataclass(frozen=True)
class Limits:
    value: Range | None = None
    length: Range | None = None
    items: Range | None = None
    required: bool = False

    @property
    def empty(self) -> bool:
        return self == Limits()


def _num(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _range(text: str, where: str) -> Range:
    match = _RANGE.match(text.replace(" ", ""))
    if match is None or (match["lo"] is None and match["hi"] is None):
        raise LimitsSyntaxError(f"{where}: {text!r} is not a range MIN..MAX")
    lo, hi = match["lo"], match["hi"]
    suffixes = {bound.endswith("s") for bound in (lo, hi) if bound is not None}
    if len(suffixes) > 1:
        raise LimitsSyntaxError(f"{where}: {text!r} mixes seconds and plain numbers")
    minimum = float(lo.rstrip("s")) if lo is not None else None
    maximum = float(hi.rstrip("s")) if hi is not None else None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise LimitsSyntaxError(f"{where}: {text!r} has its minimum above its maximum")
    return Range(minimum, maximum, seconds=suffixes == {True})


def parse(comment: str, where: str = "comment") -> Limits:
    """The limits a comment states (an empty Limits when it has no tag)."""
    value = length = items = None
    required = False
    for tag in _TAG.findall(comment):
        for part in filter(None, (p.strip() for p in tag.split(";"))):
            word, _, rest = part.partition(" ")
            if part == "required":
                required = True
            elif word == "length":
                length = _range(rest, where)
            elif word == "items":
                items = _range(rest, where)
            elif ".." in part:
                value = _range(part, where)
            else:
                raise LimitsSyntaxError(f"{where}: unknown limit {part!r} (see docs/contracts.md)")
    if "[limits" in _TAG.sub("", comment):
        raise LimitsSyntaxError(f"{where}: a '[limits' tag is not closed or lacks its ':'")
    return Limits(value, length, items, required)


def without_tags(comment: str) -> str:
    """The comment for people: the tags are stated by the schema keywords instead."""
    return _TAG.sub("", comment).strip()
