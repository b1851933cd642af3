"""The cloud fixtures (real services on loopback over the module's database) for identity tests."""

from tests.cloud.conftest import host, token

__all__ = ["host", "token"]  # db comes from tests/conftest.py
