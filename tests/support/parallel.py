"""How `make test` shares the suite out among pytest-xdist workers (a pytest plugin, see tests/conftest.py).

Each worker is a test process of its own (its own PostgreSQL, tmp_path root and port-0 servers), so
the only things to arrange here are the few that workers share or that cost per worker:
- files in the checkout that tests write and read (build/protodeps) are written once, before the
  workers start;
- with `--dist loadfile` a test file runs on one worker, so its module-scoped fixtures (a migrated
  database, a TimescaleDB server, a running stack) are built once; files listed under the ini option
  `shared_resource_files` with the same resource name run on one worker, one after the other.

pytest-xdist's own `xdist_group` mark (`--dist loadgroup`) is not used: xdist 3.8 passes the group
by appending it to the test's node id, which pytest 9.2 ignores, so the mark is dropped without a
word and the tests run in parallel anyway. A test carrying the mark errors here instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from tools import protogen

INI_NAME = "shared_resource_files"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_NAME,
        "lines of 'RESOURCE FILE': under `--dist loadfile`, the files of one resource run on one worker, in turn",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    # build/protodeps is one folder in the checkout that protoc reads in several test files; a file
    # is (re)written in place when missing or changed. Written here, once, in the controller (or the
    # only process of a serial run) before xdist starts its workers, no worker ever rewrites a file
    # while another worker's protoc reads it.
    if not hasattr(config, "workerinput"):
        protogen.sync_deps()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # An error at setup, rather than a usage error: xdist turns an error raised in a worker's collection
    # into an INTERNALERROR that loses the message.
    if item.get_closest_marker("xdist_group"):
        pytest.fail(
            "xdist_group is silently ignored with this pytest and pytest-xdist: list the test's file under "
            f"{INI_NAME} in pyproject.toml instead (docs/contributing.md)",
            pytrace=False,
        )


def resources(config: pytest.Config) -> dict[str, str]:
    """File (as in a node id) -> the name of the process-wide resource its tests use."""
    table: dict[str, str] = {}
    for line in config.getini(INI_NAME):
        resource, _, path = line.partition(" ")
        if not resource or not path.strip():
            raise pytest.UsageError(f"{INI_NAME}: {line!r} is not 'RESOURCE FILE'")
        table[path.strip()] = resource
    return table


@pytest.hookimpl(tryfirst=True)  # before xdist's own session, which answers for every --dist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, where the files that share a resource count as one file."""
    if config.getvalue("dist") != "loadfile":
        return None  # another --dist: xdist's own scheduler
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    shared = resources(config)

    class FileOrResourceScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return f"resource:{shared[path]}" if path in shared else path

    return FileOrResourceScheduling(config, log)
