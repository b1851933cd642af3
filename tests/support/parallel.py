"""How `make test` shares the suite out among pytest-xdist workers (a pytest plugin, see tests/conftest.py).

Each worker is a test process of its own (its own PostgreSQL, tmp_path root and port-0 servers), so
the only things to arrange here are the few that workers share or that cost per worker:
- files in the checkout that tests write and read (build/protodeps) are written once, before the
  workers start;
- with `--dist loadfile` a test file runs on one worker, so its module-scoped fixtures (a migrated
  database, a TimescaleDB server, a running stack) are built once; files listed under the ini option
  `shared_resource_files` with the same resource name run on one worker, one after the other;
- the files are handed out longest first (the ini option `test_file_seconds`, measured, else an
  estimate from the number of tests), so the run does not end with one worker alone on a 45-second
  file while the other idles. xdist's own order (most tests first) put the slowest files, which hold
  one or two long tests each, last.

pytest-xdist's own `xdist_group` mark (`--dist loadgroup`) is not used: xdist 3.8 passes the group
by appending it to the test's node id, which pytest 9.2 ignores, so the mark is dropped without a
word and the tests run in parallel anyway. A test carrying the mark errors here instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from tools import protogen

INI_NAME = "shared_resource_files"
SECONDS_INI = "test_file_seconds"
DIST_KEY = "emma_dist"
# An unmeasured file's estimate: most of the suite's many-test files take well under this per test.
ESTIMATE_S_PER_TEST = 0.1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_NAME,
        "lines of 'RESOURCE FILE': under `--dist loadfile`, the files of one resource run on one worker, in turn",
        type="linelist",
        default=[],
    )
    parser.addini(
        SECONDS_INI,
        "lines of 'SECONDS FILE': a file's measured run time, so `--dist loadfile` hands it out longest first",
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


def file_seconds(config: pytest.Config) -> dict[str, float]:
    """File (as in a node id) -> its measured seconds, from the ini option."""
    table: dict[str, float] = {}
    for line in config.getini(SECONDS_INI):
        seconds, _, path = line.partition(" ")
        try:
            table[path.strip()] = float(seconds)
        except ValueError:
            raise pytest.UsageError(f"{SECONDS_INI}: {line!r} is not 'SECONDS FILE'") from None
    return table


def scope_of(nodeid: str, shared: dict[str, str]) -> str:
    """The unit `--dist loadfile` hands to one worker: the file, or the resource its file shares."""
    path = nodeid.split("::", 1)[0]
    return f"resource:{shared[path]}" if path in shared else path


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """The controller's `--dist` goes to each worker (xdist sets a worker's own `dist` to "no")."""
    node.workerinput[DIST_KEY] = node.config.getvalue("dist")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadfile`, the files in the order they are handed out: longest first.

    Every worker collects (only workers do), and the scheduler hands out scopes in the collection's order (xdist's own
    reordering is switched off in `pytest_xdist_make_scheduler`). A serial run keeps file order.
    """
    if getattr(config, "workerinput", {}).get(DIST_KEY) != "loadfile":
        return
    shared, seconds = resources(config), file_seconds(config)
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(scope_of(item.nodeid, shared), []).append(item)

    def weight(scope: str) -> float:
        files = {i.nodeid.split("::", 1)[0] for i in groups[scope]}
        measured = sum(seconds.get(f, 0.0) for f in files)
        return measured or ESTIMATE_S_PER_TEST * len(groups[scope])

    items[:] = [i for scope in sorted(groups, key=weight, reverse=True) for i in groups[scope]]


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
    # The collection is already longest first (pytest_collection_modifyitems); xdist's reordering by
    # the number of tests would undo it.
    config.option.loadscopereorder = False

    class FileOrResourceScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, shared)

    return FileOrResourceScheduling(config, log)
