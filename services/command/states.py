"""The command state machine, the one place that says what may follow what.

QUEUED -> DELIVERED -> RECEIVED -> EXECUTED | REJECTED_BY_EDGE | FAILED, plus QUEUED -> CANCELLED and
QUEUED -> FAILED(TIMEOUT_IN_QUEUE). DELIVERED may jump straight to a final state when the edge's
RECEIVED was lost. Nothing leaves a final state, nothing goes backwards. Every UPDATE of a command's
state in SQL is guarded by `state = ANY(allowed predecessors)`, so concurrent workers on several
replicas can race and still only one transition wins.
"""

from __future__ import annotations

from typing import Final

from emma.command.v1 import command_pb2

QUEUED: Final = "QUEUED"
DELIVERED: Final = "DELIVERED"
RECEIVED: Final = "RECEIVED"
EXECUTED: Final = "EXECUTED"
REJECTED_BY_EDGE: Final = "REJECTED_BY_EDGE"
FAILED: Final = "FAILED"
CANCELLED: Final = "CANCELLED"

FINAL: Final = frozenset({EXECUTED, REJECTED_BY_EDGE, FAILED, CANCELLED})
ORDER: Final = {QUEUED: 0, DELIVERED: 1, RECEIVED: 2, EXECUTED: 3, REJECTED_BY_EDGE: 3, FAILED: 3, CANCELLED: 3}

# to_state -> the states it may be reached from
PREDECESSORS: Final[dict[str, frozenset[str]]] = {
    DELIVERED: frozenset({QUEUED}),
    RECEIVED: frozenset({DELIVERED}),
    EXECUTED: frozenset({DELIVERED, RECEIVED}),
    REJECTED_BY_EDGE: frozenset({DELIVERED, RECEIVED}),
    FAILED: frozenset({QUEUED, DELIVERED, RECEIVED}),
    CANCELLED: frozenset({QUEUED}),
}


def to_proto(state: str) -> command_pb2.CommandState.ValueType:
    return command_pb2.CommandState.Value(f"COMMAND_STATE_{state}")


def from_proto(state: int) -> str:
    return command_pb2.CommandState.Name(state).removeprefix("COMMAND_STATE_")  # type: ignore[arg-type]
