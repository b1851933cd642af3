"""uvicorn's HTTP/1.1 protocol (httptools), each answer leaving in one write instead of two.

uvicorn writes an answer's status line and headers when the app sends `http.response.start` and its
body when the app sends `http.response.body`: two `send` system calls per answer, each carrying a
segment through the loopback or network stack, 15 % of the gateway's event loop at 1,500 answers a
second (docs/performance.md, session 14). ASGI has no message for both at once, so the connection's
transport holds what is written during one step of the event loop and writes it as one at the end of
the step (`loop.call_soon`): a unary answer's start and body are sent in the same step, so they leave
together. A stream's headers still leave at the end of the step that sent them, before its first
event, and every event at the end of its own step: nothing waits for a later write.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class StepWrites(asyncio.Transport):
    """A transport whose writes during one step of the event loop reach `transport` as one write.

    Everything else is the wrapped transport's; closing it (or ending its writing side) first writes
    what is held, so nothing written before a close is lost, and aborting drops it, as aborting drops
    the wrapped transport's own buffer.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        # A copy of a mutable buffer: the caller may reuse it before the step ends.
        self._held.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._held)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through StepWrites (give it as uvicorn.Config(http=...))."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(StepWrites(transport, self.loop))


__all__ = ["OneWriteProtocol", "StepWrites"]
