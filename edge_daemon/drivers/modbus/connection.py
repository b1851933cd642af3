"""Where a Modbus device is and how patiently to talk to it (site config keys shared by `modbus`
and `sunspec` devices)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_daemon.drivers.modbus.link import Endpoint, RetryPolicy, SerialEndpoint, TcpEndpoint
from edge_daemon.drivers.params import DeviceReader

TRANSPORTS = ("tcp", "rtu")
PARITIES = ("N", "E", "O")


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    endpoint: Endpoint
    unit_id: int = 1
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval_s: float = 1.0
    # While the device does not answer, attempts are spaced out up to this long (see RetryDelay).
    reconnect_max_s: float = 30.0
    # 0: setpoints are written when they change; else also again once this old (an inverter's watchdog).
    setpoint_refresh_s: float = 0.0


def parse_connection(r: DeviceReader) -> ConnectionParams:
    transport = r.get_choice("transport", TRANSPORTS, "tcp")
    endpoint: Endpoint
    if transport == "tcp":
        host = r.get_str("host")
        if not host:
            raise r.error("host", "must not be empty")
        endpoint = TcpEndpoint(host, r.get_int("port", 502, minimum=1, maximum=65535))
        for key in ("serial_port", "baudrate", "parity", "stopbits", "bytesize"):
            if r.has(key):
                raise r.error(key, 'only for transport = "rtu"')
    else:
        for key in ("host", "port"):
            if r.has(key):
                raise r.error(key, 'only for transport = "tcp" (the serial device is serial_port)')
        endpoint = SerialEndpoint(
            port=r.get_str("serial_port"),
            baudrate=r.get_int("baudrate", 9600, minimum=300, maximum=4_000_000),
            parity=r.get_choice("parity", PARITIES, "N"),
            stopbits=r.get_int("stopbits", 1, minimum=1, maximum=2),
            bytesize=r.get_int("bytesize", 8, minimum=7, maximum=8),
        )
    # Unit 0 is broadcast (no answer) and 248..255 are reserved; TCP gateways still route 1..247.
    unit_id = r.get_int("unit_id", 1, minimum=1, maximum=247)
    poll_interval_s = r.get_float("poll_interval_s", 1.0, minimum=0.05, maximum=3600)
    policy = RetryPolicy(
        timeout_s=r.get_float("timeout_s", 1.0, minimum=0.01, maximum=60, exclusive_min=True),
        retries=r.get_int("retries", 2, minimum=0, maximum=10),
        backoff_s=r.get_float("retry_backoff_s", 0.1, minimum=0, maximum=60),
    )
    refresh_s = r.get_float("setpoint_refresh_s", 0.0, minimum=0.0, maximum=3600)
    if 0.0 < refresh_s < poll_interval_s:
        # Setpoints go out between polls, so a refresh cannot come more often than a poll.
        raise r.error("setpoint_refresh_s", f"must be 0 (off) or at least poll_interval_s ({poll_interval_s:g})")
    return ConnectionParams(
        endpoint=endpoint,
        unit_id=unit_id,
        policy=policy,
        poll_interval_s=poll_interval_s,
        reconnect_max_s=r.get_float("reconnect_max_s", 30.0, minimum=poll_interval_s, maximum=3600),
        setpoint_refresh_s=refresh_s,
    )
