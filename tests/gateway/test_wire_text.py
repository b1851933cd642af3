"""gateway/wire_text.py: element records cut from an answer's wire bytes, and the answer's text with
each element's text remembered by its bytes, never a text other than the answer's own.
(Every contract type's text from its bytes is proven against json_format in test_json_encoder.py.)"""

from __future__ import annotations

from emma.command.v1 import command_pb2
from emma.telemetry.v1 import telemetry_pb2

from gateway.json_text import message_json
from gateway.routes import Route, build_route_table
from gateway.transcode import AnswerText, answer_json
from gateway.wire_text import ElementTexts, element_slices
from tests.support.wire import tag, varint


def _record(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def _answer(read_time: int, *values: float) -> telemetry_pb2.ListLatestValuesResponse:
    answer = telemetry_pb2.ListLatestValuesResponse()
    answer.read_time.seconds = read_time
    for i, v in enumerate(values):
        value = answer.values.add(channel=f"organizations/o/sites/s/edges/e/devices/d/channels/C{i}", value=v, unit="W")
        value.sample_time.seconds = 1764892800 + i
        value.sample_time.nanos = 5_000_000
    return answer


def _latest_route() -> Route:
    return next(r for r in build_route_table().routes if r.method.full_name.endswith(".ListLatestValues"))


def test_records_of_the_asked_fields_come_out_in_wire_order_past_every_other_kind_of_field() -> None:
    long = b"x" * 300  # a two-byte length
    data = (
        _record(1, b"a")
        + tag(2, 0)
        + varint(2**63)  # an unknown varint of ten bytes
        + _record(300, long)  # a two-byte key
        + tag(3, 1)
        + b"\x00" * 8
        + _record(1, b"")
        + tag(4, 5)
        + b"\x01" * 4
        + _record(1, long)
        + _record(5, b"not asked")
    )
    assert element_slices(data, frozenset({1, 300})) == {1: [b"a", b"", long], 300: [long]}
    assert element_slices(data, frozenset({6})) == {6: []}
    assert element_slices(b"", frozenset({1})) == {1: []}


def test_anything_but_plain_wire_is_left_to_the_usual_printer() -> None:
    whole = _record(1, b"abc")
    refused = {
        "a record running past the end": whole[:-1],
        "a length cut off": tag(1, 2),
        "a length's varint cut off": tag(1, 2) + b"\x80",
        "a key's varint cut off": b"\x80",
        "an asked field as a varint": tag(1, 0) + varint(7),
        "a group": tag(2, 3) + tag(2, 4),
        "a wire type that does not exist": tag(2, 6),
        "a fixed64 running past the end": tag(2, 1) + b"\x00" * 7,
        "a varint running past the end": whole + tag(2, 0) + b"\x80",
    }
    for why, data in refused.items():
        assert element_slices(data, frozenset({1})) is None, why


def test_an_answer_whose_values_repeat_prints_them_from_memory_and_stays_its_own_text() -> None:
    texts = ElementTexts()
    first = _answer(1764892900, 1.0, 2.0, 3.0)
    data = first.SerializeToString()
    assert texts.json(type(first).FromString(data), data) == message_json(first)
    assert texts.remembered() == 3
    # Only read_time differs: every value's text is remembered; one value changed: one text more.
    for answer in (_answer(1764892901, 1.0, 2.0, 3.0), _answer(1764892902, 1.0, 2.5, 3.0)):
        data = answer.SerializeToString()
        assert texts.json(type(answer).FromString(data), data) == message_json(answer)
    assert texts.remembered() == 4
    empty = _answer(1764892903)
    assert texts.json(empty, empty.SerializeToString()) == message_json(empty)


def test_the_memory_is_bounded_and_large_elements_are_printed_each_time() -> None:
    answer = _answer(1764892900, *[float(i) for i in range(50)])
    data = answer.SerializeToString()
    bounded = ElementTexts(max_elements=10)
    for _ in range(3):
        assert bounded.json(type(answer).FromString(data), data) == message_json(answer)
        assert bounded.remembered() <= 10
    small = ElementTexts(max_element_bytes=8)
    assert small.json(answer, data) == message_json(answer)
    assert small.remembered() == 0


def test_bytes_that_are_not_the_message_lend_it_no_text() -> None:
    answer = _answer(1764892900, 1.0, 2.0)
    other = _answer(1764892900, 1.0)
    assert ElementTexts().json(answer, other.SerializeToString()) is None


def test_a_type_without_repeated_messages_and_bytes_with_a_group_are_printed_as_before() -> None:
    route = _latest_route()
    answer = _answer(1764892900, 1.0, 2.0)
    # An unknown group: the parser keeps it as an unknown field, the memo declines, the body is the same.
    data = answer.SerializeToString() + tag(15, 3) + tag(15, 4)
    parsed = type(answer).FromString(data)
    assert ElementTexts().json(parsed, data) is None
    answers = AnswerText()
    assert answers.json(route, data) == answer_json(route, answer)
    timestamp = answer.read_time
    assert ElementTexts().json(timestamp, timestamp.SerializeToString()) is None


def test_answer_text_prints_changed_answers_with_remembered_values_as_answer_json_does() -> None:
    route = _latest_route()
    answers = AnswerText()
    for k in range(6):
        answer = _answer(1764892900 + k, *[float(i + (k if i == 3 else 0)) for i in range(20)])
        assert answers.json(route, answer.SerializeToString()) == answer_json(route, answer)


def test_an_element_holding_a_map_prints_as_its_parsed_self_every_time() -> None:
    """A map's entries come out of a parse in wire order (not the order they were put in), and the same
    bytes always parse to the same order: what lets a remembered text stand for the bytes."""
    answer = command_pb2.ListFleetDispatchesResponse()
    skipped = answer.fleet_dispatches.add(name="organizations/o/fleetDispatches/f").status.skipped_edges
    for key in ["10", "", "b", "a", "zz", "0"]:
        skipped[key] = f"reason {key}"
    data = answer.SerializeToString()
    texts = ElementTexts()
    printed = {texts.json(type(answer).FromString(data), data) for _ in range(50)}
    assert printed == {message_json(type(answer).FromString(data))}
    assert texts.remembered() == 1
