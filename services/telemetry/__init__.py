"""TelemetryService and the telemetry store's maintenance (partitions, retention, rollups)."""
