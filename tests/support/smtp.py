"""A minimal SMTP server on loopback port 0 for tests: speaks enough of RFC 5321 (EHLO/HELO, MAIL, RCPT,
DATA, RSET, NOOP, QUIT) for smtplib to deliver to it, and keeps every message it accepted.
aiosmtpd is not a dependency; this is the real protocol over a real socket, not a mock of smtplib."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class SmtpServer:
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        sender, recipients = "", []
        await reply("220 localhost test SMTP")
        try:
            while line := await reader.readline():
                command = line.decode(errors="replace").strip()
                verb = command[:4].upper()
                if verb == "EHLO":
                    await reply("250-localhost")
                    await reply("250 8BITMIME")
                elif verb == "HELO":
                    await reply("250 localhost")
                elif verb == "MAIL":
                    sender, recipients = command.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                    await reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                    await reply("250 OK")
                elif verb == "DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                        lines.append(data[1:] if data.startswith(b"..") else data)
                    parsed = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                    assert isinstance(parsed, EmailMessage)
                    self.messages.append(Received(sender, recipients, parsed))
                    self.arrived.set()
                    await reply("250 OK: queued")
                elif verb in ("RSET", "NOOP"):
                    await reply("250 OK")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("502 command not implemented")
        finally:
            writer.close()


@asynccontextmanager
async def smtp_server() -> AsyncIterator[SmtpServer]:
    state = SmtpServer()
    server = await asyncio.start_server(state._session, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
