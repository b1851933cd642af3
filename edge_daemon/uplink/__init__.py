"""The edge daemon's uplink to the cloud: the bidirectional `EdgeLinkService.Connect` stream.

Modules, one job each:
- `batches`: samples -> columnar TelemetryBatch -> durable outbox (batch_seq stamped at append).
- `session`: one stream: Hello/Welcome, resend from the cloud's last stored batch_seq, acks, window.
- `commands` + `journal`: EdgeCommand -> request channel -> CommandAck, deduplicated and durable.
- `schedules`: Schedule -> schedule follower -> ScheduleAck.
- `backoff`: jittered exponential reconnect delays.
- `connection`: API key, channel options (TLS, keepalive, sizes), stream status parsing.
- `wire`: conversions between daemon objects and protobuf messages.
- `uplink`: GrpcUplink, which runs all of it beside the control cycle and reconnects.

`edge_daemon.main` calls `create_uplink(config)` for a site with a [cloud] section.
"""

from edge_daemon.uplink.uplink import GrpcUplink, create_uplink

__all__ = ["GrpcUplink", "create_uplink"]
