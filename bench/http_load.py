"""An HTTP load generator as its own process: `python -m bench.http_load URL --clients N --seconds S`.

N concurrent keep-alive HTTP/1.1 connections send the same GET for S seconds. The client is a few
lines of asyncio streams on purpose: a general-purpose HTTP client costs more CPU per request than
the gateway under test, and on a 2-core machine the load generator must not be the bottleneck.
Prints one JSON line: requests, errors, requests per second and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from bench.harness import percentile


async def client(host: str, port: int, request: bytes, stop: float, latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
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


async def main_async(url: str, clients: int, seconds: float, token: str) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(client(host, port, request, stop, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--token", required=True)
    args = p.parse_args()
    sys.stdout.write(json.dumps(asyncio.run(main_async(args.url, args.clients, args.seconds, args.token))) + "\n")


if __name__ == "__main__":
    main()
