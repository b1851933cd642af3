"""AIP-158 pagination: page sizes and opaque page tokens, the same for every List method."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from emma.common.v1 import errors_pb2

from services.errors import ApiError, invalid_field

MAX_PAGE_SIZE = 1000
T = TypeVar("T")


def page_size(requested: int, default: int = 50) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise invalid_field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return requested or default


def encode_token(method: str, offset: int) -> str:
    """An opaque token bound to the method, so a token of one List call is refused by another."""
    return base64.urlsafe_b64encode(json.dumps({"m": method, "o": offset}).encode()).decode()


def decode_token(method: str, token: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["m"] != method or not isinstance(data["o"], int) or data["o"] < 0:
            raise ValueError(data)
        return int(data["o"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_PAGE_TOKEN_INVALID,
            "page_token was not issued by this method",
        ) from None


@dataclass(frozen=True)
class Page:
    """One page of an offset-paginated List method: fetch `limit` rows at `offset`, answer `rows(...)`.

    One row more than the page is fetched: its presence is what says a next page exists.
    """

    method: str
    size: int
    offset: int

    @classmethod
    def of(cls, method: str, request: Any, default: int = 50) -> Page:
        return cls(method, page_size(request.page_size, default), decode_token(method, request.page_token))

    @property
    def limit(self) -> int:
        return self.size + 1

    def rows(self, rows: Sequence[T]) -> Sequence[T]:
        return rows[: self.size]

    def next_token(self, rows: Sized) -> str:
        return encode_token(self.method, self.offset + self.size) if len(rows) > self.size else ""
