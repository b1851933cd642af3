"""Calls that arrive while the server's event loop is busy wait for it; they are not refused.

grpc.aio takes up one call at a time; the calls the gRPC core holds meanwhile were refused beyond
gRPC's default backlog of 1,000 (at random, all of them from 3,000) with a bare CANCELLED that the
server never saw: a fleet of edges reconnecting at once to a busy replica lost streams before their
Hello (issue 21). Here a real server's loop is held while another process opens a burst of calls.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

from services.platform.config import ServerConfig
from services.platform.server import HostedServer, create_server, start_server

BURST = 1_500

# A separate process: it opens BURST health checks at once on one connection, says so, and prints how
# each one ended.
_CLIENT = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=60)
stub = health_pb2_grpc.HealthStub(channel)
calls = [stub.Check.future(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(int(sys.argv[2]))]
print("started", flush=True)
for call in calls:
    try:
        call.result()
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
"""


def _burst_holding_the_loop(port: int) -> subprocess.Popen[str]:
    """Start the client and return once its calls are on their way; blocking on purpose: called from
    the server's event loop, it keeps the loop from taking up any call until every call has been
    sent, and a while after that, so that all of them wait in the gRPC core."""
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"127.0.0.1:{port}", str(BURST)], stdout=subprocess.PIPE, text=True
    )
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "started"
    time.sleep(1.0)
    return client


async def _burst_while_busy(config: ServerConfig) -> Counter[str]:
    """How the calls of a burst that arrives while the server's loop is held ended."""
    hosted: HostedServer = await start_server(create_server(config), config, [])
    try:
        client = _burst_holding_the_loop(hosted.port)
        out, _ = await asyncio.to_thread(client.communicate, timeout=120)
        return Counter(out.split())
    finally:
        await hosted.drain(0)


async def test_a_burst_of_calls_that_waits_for_a_busy_server_is_answered_whole() -> None:
    ended = await _burst_while_busy(ServerConfig(port=0))
    assert ended == Counter({"OK": BURST})


async def test_calls_beyond_the_configured_backlog_are_refused() -> None:
    # The same burst against a backlog of 100: the burst did pile up behind the held loop (else the
    # test above would prove nothing), and the setting is the one gRPC applies.
    ended = await _burst_while_busy(ServerConfig(port=0, max_pending_calls=100))
    assert ended["OK"] >= 100
    assert ended["CANCELLED"] > 0
    assert ended["OK"] + ended["CANCELLED"] == BURST
