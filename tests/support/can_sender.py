"""A stand-in BMS in its own process: encodes signal values with a DBC and broadcasts them cyclically.

    python -m tests.support.can_sender --interface udp_multicast --channel 239.74.163.2 --port 43113 \
        --dbc tests/edge_daemon/drivers/data/generic_bms.dbc --values '{"Soc": 55.5}' [--period 0.05] [--seconds 10]

Every message of the DBC that has at least one given signal is sent (its other signals as 0) every
`--period` seconds until `--seconds` have passed or the process is killed. Prints "sending" once the
bus is open, so a test can wait for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import can
import cantools
from cantools.database.can import Database


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interface", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--dbc", required=True)
    p.add_argument("--values", required=True, help="JSON object: signal name -> value")
    p.add_argument("--period", type=float, default=0.05)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    db = cantools.database.load_file(args.dbc, database_format="dbc")
    assert isinstance(db, Database)
    values: dict[str, float] = json.loads(args.values)
    frames = []
    for message in db.messages:
        names = {s.name for s in message.signals}
        if names & values.keys():
            data = message.encode({n: values.get(n, 0) for n in names})
            frames.append(can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=False))
    options = {"port": args.port} if args.port else {}
    with can.Bus(interface=args.interface, channel=args.channel, **options) as bus:
        print("sending", flush=True)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for frame in frames:
                bus.send(frame)
            time.sleep(args.period)
    sys.exit(0)


if __name__ == "__main__":
    main()
