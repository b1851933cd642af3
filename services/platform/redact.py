"""Requests as proto3 JSON with every field marked [(emma.common.v1.sensitive) = true] redacted, and
responses without their INPUT_ONLY fields.

The walk follows the descriptors (nested messages, repeated fields, maps), so a new secret field needs
only the option in the contract to stay out of audit rows and logs, and a field marked
`(google.api.field_behavior) = INPUT_ONLY` (a password, a command's ttl) is never sent back.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from emma.common.v1 import types_pb2
from google.api import field_behavior_pb2
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format
from google.protobuf.message import Message

REDACTED = "[REDACTED]"
MAX_STRING_CHARS = 4096


def _is_sensitive(field: pb_descriptor.FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[types_pb2.sensitive])


def _walk(desc: pb_descriptor.Descriptor, data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    if desc.full_name.startswith("google.protobuf."):
        return data  # well-known types have their own JSON forms and no secrets
    for field in desc.fields:
        key = field.json_name if field.json_name in data else field.name
        if key not in data:
            continue
        if _is_sensitive(field):
            data[key] = REDACTED
            continue
        if field.message_type is None:
            continue
        value = data[key]
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None and isinstance(value, dict):
                for k in value:
                    value[k] = _walk(value_field.message_type, value[k])
        elif isinstance(value, list):
            data[key] = [_walk(field.message_type, v) for v in value]
        else:
            data[key] = _walk(field.message_type, value)
    return data


def _truncate(data: Any) -> Any:
    if isinstance(data, str) and len(data) > MAX_STRING_CHARS:
        return data[:MAX_STRING_CHARS] + f"...[{len(data) - MAX_STRING_CHARS} more characters]"
    if isinstance(data, dict):
        return {k: _truncate(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_truncate(v) for v in data]
    return data


def redacted_dict(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message)
    return _truncate(_walk(message.DESCRIPTOR, data))  # type: ignore[no-any-return,arg-type]


def redacted_json(message: Message) -> str:
    """The message as compact proto3 JSON, secrets replaced by "[REDACTED]", long strings cut."""
    return json.dumps(redacted_dict(message), separators=(",", ":"), sort_keys=True)


def strip_sensitive(message: Message) -> Message:
    """A copy with every sensitive field cleared (for responses kept by the idempotency store)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _clear(copy, _is_sensitive)
    return copy


def _clear(message: Message, clears: Callable[[pb_descriptor.FieldDescriptor], bool]) -> None:
    """Clear, in place and recursively, every field `clears` picks."""
    for field, value in message.ListFields():
        if clears(field):
            message.ClearField(field.name)
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                vf = field.message_type.fields_by_name["value"]
                if vf.message_type is not None:
                    for v in value.values():
                        _clear(v, clears)
            elif field.is_repeated:
                for v in value:
                    _clear(v, clears)
            else:
                _clear(value, clears)


# types-protobuf types extensions as generic descriptors the googleapis stubs do not declare.
_FIELD_BEHAVIOR: Any = field_behavior_pb2.field_behavior


def _is_input_only(field: pb_descriptor.FieldDescriptor) -> bool:
    return field_behavior_pb2.INPUT_ONLY in field.GetOptions().Extensions[_FIELD_BEHAVIOR]


@functools.cache
def _reaches_input_only(desc: pb_descriptor.Descriptor) -> bool:
    """Whether any INPUT_ONLY field can occur inside a message of this type (so the many responses
    without one are not walked)."""
    seen: set[str] = set()

    def walk(d: pb_descriptor.Descriptor) -> bool:
        if d.full_name in seen:
            return False
        seen.add(d.full_name)
        return any(_is_input_only(f) or (f.message_type is not None and walk(f.message_type)) for f in d.fields)

    return walk(desc)


def clear_input_only(message: Message) -> None:
    """Clear every INPUT_ONLY field in `message`, in place (AIP-203: such fields are not output)."""
    if _reaches_input_only(message.DESCRIPTOR):
        _clear(message, _is_input_only)
