"""How `make test` shares the suite out among xdist workers (tests/support/parallel.py), run for real on a
small suite of its own in a child pytest with two workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RECORDING_TEST = """
import os
import pytest

@pytest.mark.parametrize("n", range(4))
def test_records_its_worker(n):
    with open(os.environ["WORKER_LOG"], "a") as log:
        log.write(f"{__name__} {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def run_suite(suite: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WORKER_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        # Only the two plugins under test: loading every installed one (schemathesis, hypothesis, anyio,
        # asyncio) in the child and in its two workers made each test here take 8.1-8.7 s instead of
        # 1.2-1.4 (session 17's machine).
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-p", "tests.support.parallel",
         "-n", "2", "--dist", "loadfile",
         "--basetemp", str(suite.parent / "child-tmp"),
         "-p", "no:cacheprovider", "-q", "--rootdir", str(suite), str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_file_runs_on_one_worker_and_the_files_of_a_resource_on_one_worker(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("test_a", "test_b", "test_c", "test_d"):
        (suite / f"{name}.py").write_text(RECORDING_TEST)
    ini = "[pytest]\nshared_resource_files =\n    can-bus test_c.py\n    can-bus test_d.py\n"
    (suite / "pytest.ini").write_text(ini)
    log = tmp_path / "workers.log"
    result = run_suite(suite, log)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 passed" in result.stdout

    workers: defaultdict[str, set[str]] = defaultdict(set)
    for line in log.read_text().splitlines():
        module, worker = line.split()
        workers["shared" if module in ("test_c", "test_d") else module].add(worker)
    assert len(workers["test_a"]) == 1, workers
    assert len(workers["test_b"]) == 1, workers
    assert len(workers["shared"]) == 1, workers


def test_an_xdist_group_mark_is_refused_rather_than_silently_ignored(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_marked.py").write_text(
        "import pytest\n\n@pytest.mark.xdist_group('bus')\ndef test_uses_the_bus():\n    pass\n"
    )
    (suite / "pytest.ini").write_text("[pytest]\n")
    result = run_suite(suite, tmp_path / "workers.log")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "xdist_group is silently ignored" in result.stdout


def test_the_longest_files_are_handed_out_first(tmp_path: Path) -> None:
    # xdist's own order hands out the files with the most tests first; the measured seconds of
    # `test_file_seconds` must win over that, so each worker starts on one of the two slow files.
    suite = tmp_path / "suite"
    suite.mkdir()
    one_test = RECORDING_TEST.replace("range(4)", "range(1)")
    for name in ("test_e", "test_f", "test_g", "test_h"):
        (suite / f"{name}.py").write_text(RECORDING_TEST)
    for name in ("test_mid", "test_slow"):
        (suite / f"{name}.py").write_text(one_test)
    ini = "[pytest]\ntest_file_seconds =\n    50 test_slow.py\n    20 test_mid.py\n"
    (suite / "pytest.ini").write_text(ini)
    log = tmp_path / "workers.log"
    result = run_suite(suite, log)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "18 passed" in result.stdout

    first: dict[str, str] = {}
    for line in log.read_text().splitlines():
        module, worker = line.split()
        first.setdefault(worker, module)
    assert sorted(first.values()) == ["test_mid", "test_slow"], first
