"""An HTTP load generator as its own process: `python -m bench.http_load URL --clients N --seconds S [--rate R]`.

N keep-alive HTTP/1.1 connections send the same GET for S seconds. With `--rate R` the load is open
loop: request k of client c is due at t0 + (c + k·N) / R, whatever the earlier ones are doing, and its
latency runs from that due time, so a server that falls behind is charged for the wait (no
coordinated omission). A client whose previous answer is late sends the next request as soon as that
answer is in. Without `--rate` every client sends its next request when the previous answer arrived
(closed loop: the most the server gives at N clients).

The client is a few lines of asyncio streams on purpose: a general-purpose HTTP client costs more CPU
per request than the gateway under test, and on a 2-core machine the load generator must not be the
bottleneck. Prints one JSON line: requests, errors, requests per second, latency percentiles and the
process's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from bench.harness import percentile


async def client(
    host: str,
    port: int,
    request: bytes,
    stop: float,
    first_due: float | None,
    period: float | None,
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    due = first_due
    try:
        while True:
            if due is not None and period is not None:
                # Requests due after the window are not sent, nor are those still unsent when it
                # closes: a server that fell behind shows as a lower rate and a higher p99.
                if due >= stop or time.perf_counter() >= stop:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = due
                due += period
            else:
                started = time.perf_counter()
                if started >= stop:
                    return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors.append(str(status))
    finally:
        writer.close()


async def main_async(url: str, clients: int, seconds: float, token: str, rate: float | None) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors: list[str] = []
    cpu0 = time.process_time()
    # A short pause after connecting so the connection set-up is not charged to the first requests.
    started = time.perf_counter() + 0.2
    stop = started + seconds
    period = clients / rate if rate else None
    await asyncio.gather(
        *(
            client(host, port, request, stop, started + c / rate if rate else None, period, latencies, errors)
            for c in range(clients)
        )
    )
    elapsed = time.perf_counter() - started
    return {
        "mode": f"open loop at {rate:g} req/s" if rate else "closed loop",
        "requests": len(latencies),
        "errors": len(errors),
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "client_cpu_s": time.process_time() - cpu0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests/s (0: closed loop)")
    p.add_argument("--token", required=True)
    args = p.parse_args()
    result = asyncio.run(main_async(args.url, args.clients, args.seconds, args.token, args.rate or None))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
