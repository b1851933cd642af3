"""EMMA."""
