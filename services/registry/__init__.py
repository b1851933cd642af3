"""Registry (issue 6)."""
