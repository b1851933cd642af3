"""Checks of what an edge declares about itself (Hello, ChannelTableAppend) before any of it is stored.

PostgreSQL's text cannot hold a NUL character, so a NUL in a device id, a model or a channel name
made the inventory's INSERT fail and the edge got INTERNAL, on every reconnect. Each string is
checked here and a bad one is refused with INVALID_ARGUMENT FIELD_INVALID naming its field path
(`hello.devices[0].channels[1].name`). Enum values are not checked: a newer edge may send values
this server does not know yet (proto3 enums are open, and v1 only ever adds values).

Channel indexes are bounded because the session keeps a dense table from index to series: one
index of 4,294,967,295 made the server allocate 32 GiB.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from emma.edge.v1 import edge_link_pb2
from google.protobuf import descriptor as d
from google.protobuf.message import Message

from services.errors import invalid_field
from services.names import CHANNEL_ADDRESS

# Far above a real edge's channel count over its life; keeps the session's index table at most 512 KiB.
MAX_CHANNEL_INDEX = 65_535
# Names, units, models and descriptions; anything longer is not a declaration but an accident or an attack.
MAX_TEXT_CHARS = 1_000
# Never echoed or checked here: a bad key fails authentication, and it is a secret.
_SKIPPED = frozenset({"emma.edge.v1.Hello.api_key"})


def _text_problems(message: Message, prefix: str) -> Iterator[tuple[str, str]]:
    for f, value in message.ListFields():
        if f.full_name in _SKIPPED:
            continue
        path = prefix + f.name
        repeated = f.is_repeated
        items = list(value) if repeated else [value]
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if repeated else path
            if f.type == d.FieldDescriptor.TYPE_MESSAGE:
                yield from _text_problems(item, item_path + ".")
            elif f.type == d.FieldDescriptor.TYPE_STRING:
                if "\x00" in item:
                    yield item_path, "must not contain a NUL character"
                elif len(item) > MAX_TEXT_CHARS:
                    yield item_path, f"at most {MAX_TEXT_CHARS} characters"


def check_text(message: Message, prefix: str) -> None:
    """Refuse the first string of `message` (recursively) that holds a NUL character or is too long."""
    for path, problem in _text_problems(message, prefix):
        raise invalid_field(path, problem)


def check_channel_indexes(indexes: Iterable[int], prefix: str) -> None:
    for i, index in enumerate(indexes):
        if index > MAX_CHANNEL_INDEX:
            raise invalid_field(f"{prefix}[{i}].index", f"{index} is above {MAX_CHANNEL_INDEX}")


def check_channel_addresses(table: Sequence[edge_link_pb2.ChannelDescriptor], path: str) -> None:
    for entry in table:
        if not CHANNEL_ADDRESS.match(entry.channel):
            raise invalid_field(path, f"{entry.channel!r} is not a device/Channel address")
