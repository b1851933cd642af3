"""The edge's files are its user's alone: folders it creates 0700, outbox (with -wal and -shm), site
files and logs 0600, whatever the umask, and files an earlier release left wider are narrowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_daemon.config import demo_site_config, demo_site_dict
from edge_daemon.outbox import Outbox
from edge_daemon.private_files import open_private_append
from edge_daemon.site_toml import write_site_toml


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    # The common default; with it, files are 0644 and folders 0755 unless the code says otherwise.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_outbox_and_its_wal_and_shm_files_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "edge" / "outbox.sqlite"
    box = Outbox(path, 1_000_000)
    try:
        box.append(b"a batch")
        files = [path, path.with_name("outbox.sqlite-wal"), path.with_name("outbox.sqlite-shm")]
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        box.close()


def test_an_outbox_left_world_readable_is_narrowed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path, 1_000_000).close()
    for p in tmp_path.iterdir():
        os.chmod(p, 0o644)
    box = Outbox(path, 1_000_000)
    try:
        assert {p.name: mode(p) for p in tmp_path.iterdir()} == {p.name: 0o600 for p in tmp_path.iterdir()}
    finally:
        box.close()


def test_the_simulated_edges_data_folder_is_0700(tmp_path: Path) -> None:
    config = demo_site_config(tmp_path / "edge-sim")
    box = Outbox(config.outbox.path, 1_000_000)
    box.close()
    assert mode(tmp_path / "edge-sim") == 0o700
    assert mode(config.outbox.path) == 0o600


def test_a_generated_site_file_is_0600_also_when_it_replaces_a_wider_one(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("# an older file\n")
    os.chmod(path, 0o644)
    write_site_toml(path, demo_site_dict(period_s=1.0, outbox_path="outbox.sqlite"))
    assert mode(path) == 0o600
    assert "[site]" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.toml"]  # no temporary file left


def test_a_log_file_is_appended_0600(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "edge.log"
    path.parent.mkdir()
    path.write_bytes(b"earlier\n")
    os.chmod(path, 0o644)
    with open_private_append(path) as log:
        log.write(b"later\n")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"earlier\nlater\n"
