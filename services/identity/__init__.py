"""Identity (issue 6)."""
