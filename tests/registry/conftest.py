"""The cloud fixtures (real services on loopback over the module's database) for registry tests."""

from tests.cloud.conftest import db, host, token

__all__ = ["db", "host", "token"]
