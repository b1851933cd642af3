"""AnswerText: the JSON body of a unary answer from its bytes, the route's last one remembered, and never
a body other than the one the answer's own bytes print to."""

from __future__ import annotations

import dataclasses

from emma.telemetry.v1 import telemetry_pb2

from gateway.routes import Route, build_route_table
from gateway.transcode import AnswerText, answer_json


def _latest_route() -> Route:
    return next(r for r in build_route_table().routes if r.method.full_name.endswith(".ListLatestValues"))


def _answer(*values: float) -> telemetry_pb2.ListLatestValuesResponse:
    answer = telemetry_pb2.ListLatestValuesResponse()
    answer.read_time.seconds = 1764892800
    for i, v in enumerate(values):
        answer.values.add(channel=f"c{i}", value=v, unit="W").sample_time.seconds = 1764892800 + i
    return answer


def test_equal_bytes_get_the_remembered_body_and_other_bytes_their_own() -> None:
    route = _latest_route()
    answers = AnswerText()
    first, second = _answer(1.0, 2.0), _answer(1.0, 2.5)
    body = answers.json(route, first.SerializeToString())
    assert body == answer_json(route, first)
    assert answers.json(route, first.SerializeToString()) is body  # the same bytes again: not printed anew
    assert answers.json(route, second.SerializeToString()) == answer_json(route, second)
    assert answers.json(route, first.SerializeToString()) == body


def test_each_route_remembers_its_own_body() -> None:
    """Two rules of one RPC may print the same bytes differently (response_body)."""
    route = _latest_route()
    narrowed = dataclasses.replace(
        route, response_body="values", response_field=route.method.output_type.fields_by_name["values"]
    )
    answers = AnswerText()
    data = _answer(3.0).SerializeToString()
    whole = answers.json(route, data)
    only_values = answers.json(narrowed, data)
    assert whole == answer_json(route, _answer(3.0))
    assert only_values == answer_json(narrowed, _answer(3.0))
    assert whole != only_values
    assert answers.json(route, data) is whole


def test_a_large_answer_is_printed_each_time() -> None:
    route = _latest_route()
    answer = _answer(*[float(i) for i in range(200)])
    data = answer.SerializeToString()
    answers = AnswerText(max_bytes=len(data) - 1)
    body = answers.json(route, data)
    again = answers.json(route, data)
    assert again == body == answer_json(route, answer)
    assert again is not body
