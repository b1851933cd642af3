"""The answer of ListLatestValues built from a read's rows, copied from the parent's previous answer when
the rows did not change.

Fifty dashboards polling a site read the same latest values again and again: between two reads of a
quiet site nothing but `read_time` differs. Building 50 values in Python (a resource name and a
Timestamp each) was ~80 µs a read, 8 % of the services' event loop at 1,500 reads a second
(docs/performance.md, session 15); copying the previous answer's values (protobuf's C copy) is a
quarter of that. Every answer still comes from its own read's rows: the copy is taken only when those
rows are equal, column by column, to the rows the previous answer was built from, and each value is a
function of its row and its edge's name (an edge's pk is never reused and its name never changes).
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Sequence
from typing import Any

from emma.telemetry.v1 import telemetry_pb2

from services.names import EdgeName, Scope, channel_resource
from services.platform.rpc import set_timestamp

# Parents whose previous answer is kept (a few kB each); a parent read once a long time ago is built anew.
MAX_REMEMBERED_PARENTS = 1024


class LatestAnswers:
    """ListLatestValuesResponse per read, the values of each parent's previous answer reused while its
    rows are equal. Answers are never changed after they are returned (calls that shared a read are
    all answered with the one message)."""

    def __init__(self, max_parents: int = MAX_REMEMBERED_PARENTS) -> None:
        self._max_parents = max_parents
        self._last: collections.OrderedDict[Scope, tuple[Sequence[Any], telemetry_pb2.ListLatestValuesResponse]] = (
            collections.OrderedDict()
        )

    def answer(
        self, scope: Scope, edges: dict[int, EdgeName], rows: Sequence[Any], read_time: dt.datetime
    ) -> telemetry_pb2.ListLatestValuesResponse:
        """The answer of `rows` (edge_pk, channel, unit, time, value, in answer order), read at `read_time`."""
        response = telemetry_pb2.ListLatestValuesResponse()
        last = self._last.get(scope)
        if last is not None and last[0] == rows:
            response.values.MergeFrom(last[1].values)
            self._last.move_to_end(scope)
        else:
            values = response.values
            for r in rows:
                value = values.add(
                    channel=channel_resource(edges[r["edge_pk"]], r["channel"]), value=r["value"], unit=r["unit"]
                )
                set_timestamp(value.sample_time, r["time"])
            self._last[scope] = (rows, response)
            self._last.move_to_end(scope)
            while len(self._last) > self._max_parents:
                self._last.popitem(last=False)
        set_timestamp(response.read_time, read_time)
        return response

    def __len__(self) -> int:
        return len(self._last)


__all__ = ["MAX_REMEMBERED_PARENTS", "LatestAnswers"]
