"""The image: `make image` with no container builder says so; the Containerfile's final stage runs `emma`
as a non-root user with OCI labels; the wheel carries every migration and every replay recording."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy.kubelet import ROOT, image_env, image_files

CONTAINERFILE = (ROOT / "Containerfile").read_text()
FINAL = CONTAINERFILE.rsplit("\nFROM ", 1)[1]


def test_make_image_without_a_builder_names_the_three_it_looks_for(tmp_path: Path) -> None:
    # A PATH with make, git, sed and a shell but none of podman, buildah, docker.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sh", "git", "sed"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["make", "-C", str(ROOT), "image"], env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "make image: no container builder found: install podman, buildah or docker" in done.stderr


def test_make_image_builds_with_the_builder_it_finds_and_labels_version_and_source() -> None:
    dry = subprocess.run(
        ["make", "-C", str(ROOT), "-n", "image", "BUILDER=podman"], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert version
    assert f"podman build -f Containerfile -t emma:{version.group(1)}" in dry.stdout
    assert f"--build-arg VERSION={version.group(1)}" in dry.stdout and "--build-arg SOURCE=" in dry.stdout


def test_the_final_stage_runs_emma_as_a_non_root_user_without_compilers_or_caches() -> None:
    assert re.search(r"^USER 10001:10001$", FINAL, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["emma"\]$', FINAL, re.MULTILINE)
    for label in ("version", "source", "revision"):
        assert f"org.opencontainers.image.{label}=" in FINAL
    assert "build-essential" not in FINAL and "apt-get install" not in FINAL  # compilers only in the build stage
    assert "pip install --no-index --find-links /wheels emma" in FINAL  # from the built wheels, nothing fetched
    assert "pip uninstall -y pip setuptools wheel" in FINAL and "rm -rf /root/.cache" in FINAL


def test_the_wheel_and_the_containerfile_together_carry_every_migration(tmp_path: Path) -> None:
    # The wheel is built from a copy of the tracked package sources, as the Containerfile's build stage does.
    src = tmp_path / "src"
    tracked = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "ls-files",
            "pyproject.toml",
            "README.md",
            "core",
            "services",
            "gateway",
            "edge_daemon",
            "launcher",
            "gen",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("emma-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {Path(n).name for n in names if n.startswith("services/migrations/")}
    tracked_sql = {Path(n).name for n in tracked if n.startswith("services/migrations/") and n.endswith(".sql")}
    assert tracked_sql and tracked_sql <= in_wheel
    # `emma up` serves the recorded market and weather answers from the installed package.
    recordings = {n for n in tracked if "_replay/recordings/" in n}
    assert recordings and recordings <= set(names)


def test_the_image_carries_the_dashboard_where_the_gateway_looks_for_it() -> None:
    # gateway/web.py's default (web/dist beside the packages) exists only in a checkout: the image copies
    # the built dashboard and says where with EMMA_GATEWAY_WEB_DIR (the kubelet test serves `/` from it).
    copied = image_files()
    web_dir = image_env()["EMMA_GATEWAY_WEB_DIR"]
    assert copied[web_dir] == ROOT / "web" / "dist"
    assert (ROOT / "web" / "dist" / "index.html").is_file()
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "web/dist/index.html"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["web/dist/index.html"], "the build context is the checkout: the dashboard must be committed"
    # The build context lets it in (.containerignore excludes everything it does not name).
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    assert "*" in ignore and "!web/dist/" in ignore
