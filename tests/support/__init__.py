"""Helpers shared by the tests: real servers, clients, simulators and data builders, imported as
`tests.support.<module>`. `tests.support.cloud` is also a pytest plugin, registered in tests/conftest.py,
which also has pytest rewrite the asserts of this package like a test's."""
