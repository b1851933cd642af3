"""`python -m launcher.market_replay --port 8089 [--redate] [--control]`.

The tokens it accepts are EMMA_ENTSOE_TOKEN and EMMA_ESIOS_TOKEN, the same variables EMMA's clients
send, so both sides agree without a token on a command line (where `ps` would show it). Point the
clients at it with EMMA_ENTSOE_URL=http://127.0.0.1:8089/api, EMMA_REDATA_URL=http://127.0.0.1:8089
and EMMA_ESIOS_URL=http://127.0.0.1:8089.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from launcher.market_replay.server import ReplayServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.market_replay", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="port (0 picks a free one and prints it)")
    parser.add_argument(
        "--redate",
        action="store_true",
        help="demo aid: serve the recorded days moved onto the requested days (values unchanged)",
    )
    parser.add_argument("--control", action="store_true", help="enable /_replay/faults and /_replay/requests")
    args = parser.parse_args(argv)
    entsoe_token = os.environ.get("EMMA_ENTSOE_TOKEN", "").strip()
    esios_token = os.environ.get("EMMA_ESIOS_TOKEN", "").strip()
    if not entsoe_token or not esios_token:
        print(
            "EMMA_ENTSOE_TOKEN and EMMA_ESIOS_TOKEN must be set: the replay checks tokens like the real APIs",
            file=sys.stderr,
        )
        return 2

    async def run() -> None:
        server = ReplayServer(entsoe_token, esios_token, args.host, args.port, args.redate, args.control)
        await server.start()
        print(f"market replay listening on {server.url} (ENTSO-E {server.url}/api)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
