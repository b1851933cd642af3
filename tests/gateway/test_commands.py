"""Commands over REST: CreateCommand's final_state_wait is a query parameter of the generated route."""

from __future__ import annotations

import asyncio
import uuid

from emma.edge.v1 import edge_link_pb2

from services.command.validation import MAX_FINAL_STATE_WAIT
from tests.support.edge_client import CHANNELS, EdgeStream, battery_inventory, welcomed
from tests.support.gateway import EDGE, Client, Stack, error_of, reason_of


async def _execute_next(stream: EdgeStream) -> str:
    """The edge's side: take the next command, acknowledge RECEIVED then EXECUTED with its value."""
    command = (await stream.recv_kind("command")).command
    for status in (edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED):
        ack = edge_link_pb2.CommandAck(command=command.name, status=status, applied_value=command.value)
        await stream.send(edge_link_pb2.ConnectRequest(command_ack=ack))
    return str(command.name)


async def test_create_command_with_final_state_wait_answers_with_the_outcome(stack: Stack, client: Client) -> None:
    stream = await welcomed(stack.port, EDGE, stack.edge_key, CHANNELS, devices=[battery_inventory()])
    try:
        edge_side = asyncio.create_task(_execute_next(stream))
        async with client() as c:
            r = await c.post(
                f"/v1/{EDGE}/commands",
                params={"requestId": str(uuid.uuid4()), "finalStateWait": "10s"},
                json={"channel": "battery_1/SetMode", "value": 1},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["name"] == await edge_side
            assert body["state"] == "COMMAND_STATE_EXECUTED" and body["appliedValue"] == 1
            assert [t["toState"] for t in body["transitions"]] == [
                "COMMAND_STATE_QUEUED",
                "COMMAND_STATE_DELIVERED",
                "COMMAND_STATE_RECEIVED",
                "COMMAND_STATE_EXECUTED",
            ]
            # Past the stated maximum: 400 naming the field, and the command is not created.
            too_long = f"{int(MAX_FINAL_STATE_WAIT.total_seconds()) + 1}s"
            refused = await c.post(
                f"/v1/{EDGE}/commands",
                params={"requestId": str(uuid.uuid4()), "final_state_wait": too_long},
                json={"channel": "battery_1/SetMode", "value": 0},
            )
            assert refused.status_code == 400, refused.text
            error = error_of(refused)
            assert reason_of(error) == "FIELD_INVALID" and "final_state_wait" in error["message"]
            listed = await c.get(f"/v1/{EDGE}/commands")
            assert [cmd["name"] for cmd in listed.json()["commands"]] == [body["name"]]
    finally:
        await stream.close()
