"""Commands: CommandService, fleet dispatch, and the relay of commands to the edge streams."""

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity", "registry", "telemetry")
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = ("app.commands", "app.command_events", "app.fleet_dispatches")
