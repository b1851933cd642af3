"""Auth (issue 6)."""
