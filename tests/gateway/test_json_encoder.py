"""The gateway's compiled JSON encoders (the document and the text printer) print exactly what
json_format prints, byte for byte.

Every message type of the contracts (and every answer type) is filled with generated values,
including proto3's edge cases: -0.0, NaN and infinities, 64-bit extremes, enum numbers the enum does
not define, oneofs and optional fields set to their defaults, empty and non-empty maps with bool and
integer keys, Timestamps at both ends of their range with 0/3/6/9 fractional digits, negative
Durations, recursive messages. Each is printed by `json_encoder.message_to_dict`, by
`json_text.message_json` and by json_format (with the INPUT_ONLY fields removed, as the gateway always
did), and the three JSON texts must be equal; so must the text `wire_text.ElementTexts` prints from the
message's bytes, with element texts remembered from earlier examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from google.protobuf import descriptor as d
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.json_encoder import Unprintable, is_input_only, message_to_dict, slow_message_to_dict
from gateway.json_text import message_json, repeated_message_fields
from gateway.routes import build_route_table
from gateway.transcode import answer_json
from gateway.wire_text import ElementTexts
from tests.support.contract_descriptors import messages

F = d.FieldDescriptor
_INT_RANGES = {
    F.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    F.CPPTYPE_UINT32: (0, 2**32 - 1),
    F.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    F.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_SPECIAL_FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-320, 3.4028234663852886e38, 0.1, -2.5]


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _class(descriptor: d.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _scalar(draw: Any, field: d.FieldDescriptor) -> Any:
    cpp = field.cpp_type
    if cpp in _INT_RANGES:
        low, high = _INT_RANGES[cpp]
        return draw(st.one_of(st.sampled_from([0, low, high, 1, -1 if low < 0 else 2]), st.integers(low, high)))
    if cpp == F.CPPTYPE_DOUBLE:
        return draw(st.one_of(st.sampled_from(_SPECIAL_FLOATS), st.floats(allow_nan=True)))
    if cpp == F.CPPTYPE_FLOAT:
        return draw(st.one_of(st.sampled_from([*_SPECIAL_FLOATS[:5], 0.1, 1.5]), st.floats(width=32)))
    if cpp == F.CPPTYPE_BOOL:
        return draw(st.booleans())
    if cpp == F.CPPTYPE_ENUM:
        known = [v.number for v in field.enum_type.values]  # type: ignore[union-attr]
        return draw(st.one_of(st.sampled_from(known), st.integers(-5, 200)))
    if field.type == F.TYPE_BYTES:
        return draw(st.binary(max_size=12))
    return draw(st.text(max_size=8))


def _fill(draw: Any, message: Message, depth: int) -> None:
    descriptor = message.DESCRIPTOR
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = draw(st.sampled_from([-62135596800, 0, 1764892800, 253402300799]) | st.integers(0, 2**33))  # type: ignore[attr-defined]
        message.nanos = draw(st.sampled_from([0, 5_000_000, 123_000, 7, 999_999_999]))  # type: ignore[attr-defined]
        return
    if name == "google.protobuf.Duration":
        seconds = draw(st.integers(-(10**6), 10**6))
        nanos = draw(st.sampled_from([0, 500_000_000, 1_000, 3]))
        message.seconds = seconds  # type: ignore[attr-defined]
        message.nanos = -nanos if seconds < 0 or (seconds == 0 and draw(st.booleans())) else nanos  # type: ignore[attr-defined]
        return
    if name.startswith("google.protobuf.") and name != "google.protobuf.Empty":
        return  # json_format prints these in both paths
    chosen_oneofs = {o.name: draw(st.sampled_from([None, *(f.name for f in o.fields)])) for o in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen_oneofs[oneof.name] != field.name:
            continue
        if oneof is None and not draw(st.integers(0, 3)):
            continue  # some fields stay unset
        value_type = field.message_type
        if value_type is not None and value_type.GetOptions().map_entry:
            key_field = value_type.fields_by_name["key"]
            value_field = value_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 2))):
                key = _scalar(draw, key_field)
                if value_field.message_type is None:
                    target[key] = _scalar(draw, value_field)
                elif depth > 0:
                    _fill(draw, target[key], depth - 1)
            continue
        if field.is_repeated:
            items = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 2))):
                if value_type is None:
                    items.append(_scalar(draw, field))
                elif depth > 0:
                    _fill(draw, items.add(), depth - 1)
            continue
        if value_type is not None:
            if depth > 0:
                sub = getattr(message, field.name)
                sub.SetInParent()
                _fill(draw, sub, depth - 1)
            continue
        setattr(message, field.name, _scalar(draw, field))


_TYPES = sorted(
    {m.full_name: m for m in messages() if not m.GetOptions().map_entry}.values(), key=lambda m: m.full_name
)


# One for the whole run, so that later examples meet element texts remembered from earlier ones.
_ELEMENTS = ElementTexts()


def _from_wire(message: Message) -> tuple[str | None, str]:
    """The text gateway/wire_text.py prints for the message's bytes, twice (the second time from the
    element texts the first remembered, which must not change a byte), and json_format's text of the
    message those bytes parse to: the gateway only ever prints parsed answers, and a map's entries
    come out of a parse in wire order, which need not be the order they were put in."""
    data = message.SerializeToString()
    parsed = type(message).FromString(data)
    first = _ELEMENTS.json(parsed, data)
    again = _ELEMENTS.json(type(message).FromString(data), data)
    assert again == first
    return first, _dumps(slow_message_to_dict(parsed))


@pytest.mark.parametrize("descriptor", _TYPES, ids=lambda m: m.full_name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_encoder_prints_what_json_format_prints(descriptor: d.Descriptor, data: st.DataObject) -> None:
    message = _class(descriptor)()
    _fill(data.draw, message, depth=3)
    reference = _dumps(slow_message_to_dict(message))
    assert _dumps(message_to_dict(message)) == reference
    assert message_json(message) == reference  # the text printer (gateway/json_text.py)
    # From the bytes, elements of repeated message fields remembered (gateway/wire_text.py): the same
    # text, or None for a type without such fields (the caller then prints as above).
    from_wire, parsed_reference = _from_wire(message)
    if repeated_message_fields(descriptor):
        assert from_wire == parsed_reference
    else:
        assert from_wire is None


def test_every_kind_of_field_is_covered_by_the_contracts() -> None:
    """The generated corpus reaches each conversion the encoder has (else a gap would go unproven)."""
    kinds: set[str] = set()
    for m in _TYPES:
        for f in m.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                kinds.add("map")
            elif f.message_type is not None:
                kinds.add(f.message_type.full_name if f.message_type.full_name.startswith("google.") else "message")
            else:
                kinds.add(f"cpp{f.cpp_type}")
            if f.containing_oneof is not None:
                kinds.add("oneof")
            if f.has_presence and f.message_type is None:
                kinds.add("optional scalar")
    expected = {
        "map",
        "message",
        "oneof",
        "optional scalar",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        f"cpp{F.CPPTYPE_INT64}",
        f"cpp{F.CPPTYPE_INT32}",
        f"cpp{F.CPPTYPE_DOUBLE}",
        f"cpp{F.CPPTYPE_BOOL}",
        f"cpp{F.CPPTYPE_ENUM}",
        f"cpp{F.CPPTYPE_STRING}",
    }
    assert expected <= kinds, expected - kinds


def test_an_unprintable_timestamp_fails_as_json_format_fails() -> None:
    from emma.telemetry.v1 import telemetry_pb2
    from google.protobuf import timestamp_pb2

    answer = telemetry_pb2.ListLatestValuesResponse(read_time=timestamp_pb2.Timestamp(seconds=2**40))
    with pytest.raises(json_format.SerializeToJsonError) as fast:
        message_to_dict(answer)
    with pytest.raises(json_format.SerializeToJsonError) as reference:
        slow_message_to_dict(answer)
    assert str(fast.value) == str(reference.value)
    with pytest.raises(Unprintable):
        message_json(answer)
    route = next(r for r in build_route_table().routes if r.method.full_name.endswith(".ListLatestValues"))
    with pytest.raises(json_format.SerializeToJsonError) as answered:
        answer_json(route, answer)
    assert str(answered.value) == str(reference.value)


def test_an_answer_narrowed_to_one_field_prints_that_field() -> None:
    """A rule with response_body answers with one field of the message: the document's, not the text's.
    (No contract has one yet; the ListLatestValues rule is given one here.)"""
    from emma.telemetry.v1 import telemetry_pb2

    route = next(r for r in build_route_table().routes if r.method.full_name.endswith(".ListLatestValues"))
    values = route.method.output_type.fields_by_name["values"]
    narrowed = dataclasses.replace(route, response_body="values", response_field=values)
    answer = telemetry_pb2.ListLatestValuesResponse()
    answer.values.add(channel="c", value=-0.0, unit="W").sample_time.seconds = 1764892800
    assert answer_json(narrowed, answer).decode() == _dumps(slow_message_to_dict(answer)["values"])
    assert answer_json(route, answer).decode() == _dumps(slow_message_to_dict(answer))


def test_input_only_fields_are_never_printed() -> None:
    found = [
        (m, f) for m in _TYPES for f in m.fields if f.message_type is None and not f.has_presence and is_input_only(f)
    ]
    assert found, "the contracts have INPUT_ONLY fields (passwords)"
    for m, f in found:
        message = _class(m)()
        doc = message_to_dict(message)
        assert f.json_name not in doc


def _odd_type() -> d.Descriptor:
    """A message type the contracts do not have, for what the text printer writes differently for it:
    fields declared out of number order (the unset ones print in declaration order), fields named by
    Python keywords (read with getattr), a type containing itself, a map with bool keys, an open enum,
    an optional scalar and every scalar kind next to each other."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="odd.proto", package="emma.test.odd", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    file.enum_type.add(name="Color").value.extend(
        [descriptor_pb2.EnumValueDescriptorProto(name=n, number=i) for i, n in enumerate(["COLOR_UNSET", "RED"])]
    )
    odd = file.message_type.add(name="Odd")
    entry = odd.nested_type.add(name="FlagsEntry")
    entry.options.map_entry = True
    P = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=P.TYPE_BOOL, label=P.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=P.TYPE_INT64, label=P.LABEL_OPTIONAL)
    fields = [
        ("from", 9, P.TYPE_STRING, P.LABEL_OPTIONAL, ""),
        ("value", 1, P.TYPE_DOUBLE, P.LABEL_OPTIONAL, ""),
        ("children", 3, P.TYPE_MESSAGE, P.LABEL_REPEATED, ".emma.test.odd.Odd"),
        ("flags", 7, P.TYPE_MESSAGE, P.LABEL_REPEATED, ".emma.test.odd.Odd.FlagsEntry"),
        ("color", 2, P.TYPE_ENUM, P.LABEL_OPTIONAL, ".emma.test.odd.Color"),
        ("in", 8, P.TYPE_INT64, P.LABEL_OPTIONAL, ""),
        ("ratio", 4, P.TYPE_FLOAT, P.LABEL_OPTIONAL, ""),
        ("data", 6, P.TYPE_BYTES, P.LABEL_OPTIONAL, ""),
        ("at", 5, P.TYPE_MESSAGE, P.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
        ("ok", 11, P.TYPE_BOOL, P.LABEL_OPTIONAL, ""),
        ("counts", 10, P.TYPE_UINT32, P.LABEL_REPEATED, ""),
    ]
    for name, number, kind, label, type_name in fields:
        field = odd.field.add(name=name, number=number, type=kind, label=label, json_name=name)
        if type_name:
            field.type_name = type_name
    maybe = odd.field.add(name="maybe", number=12, type=P.TYPE_SINT32, label=P.LABEL_OPTIONAL, json_name="maybe")
    maybe.proto3_optional = True
    maybe.oneof_index = 0
    odd.oneof_decl.add(name="_maybe")
    pool.Add(file)
    return pool.FindMessageTypeByName("emma.test.odd.Odd")


_ODD = _odd_type()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_text_printer_prints_what_json_format_prints_for_a_type_the_contracts_lack(data: st.DataObject) -> None:
    message = _class(_ODD)()
    _fill(data.draw, message, depth=3)
    assert message_json(message) == _dumps(slow_message_to_dict(message))
    # Its repeated `children` come from the bytes (its map `flags` is printed as before).
    from_wire, parsed_reference = _from_wire(message)
    assert from_wire == parsed_reference
