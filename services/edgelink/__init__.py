"""EdgeLinkService: the cloud end of the edge stream, and telemetry ingest."""
