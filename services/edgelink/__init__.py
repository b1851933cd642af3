"""EdgeLinkService: the cloud end of each edge's one bidirectional stream (sessions, events, ingest)."""

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity", "registry", "telemetry", "command")
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = ("app.edge_sessions", "app.edge_events")
