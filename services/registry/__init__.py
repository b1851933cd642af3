"""Registry: sites, edges, devices and device profiles, and the inventory an edge reports."""

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON = ("identity",)
# The tables (and SQL functions) this domain alone reads and writes; other domains go through this package or its RPCs.
TABLES = (
    "app.sites",
    "app.edges",
    "app.devices",
    "app.device_profiles",
    "app.device_profile_channels",
    "app.edge_inventory",
)
