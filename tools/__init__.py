"""Build tools for EMMA (code generation, contract checks)."""
