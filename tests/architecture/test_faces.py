"""Each domain's package face is pinned: what other packages may use of a domain is a deliberate list.

A change to a face (a name added or removed) fails here until this pin is edited with it, so the
public API of a domain changes only on purpose, and in review. Every name in `__all__` must exist,
and the face must declare what the architecture tests read (DEPENDS_ON, TABLES, POLICY, SERVICES).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.architecture.test_layers import domains

# One file per domain (tests/architecture/faces/<domain>.txt), so a change to one domain's face is
# reviewed on its own and two domains can change their faces at the same time.
PINS = Path(__file__).parent / "faces"


def _pin(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


FACES: dict[str, list[str]] = {f"services.{path.stem}": _pin(path) for path in sorted(PINS.glob("*.txt"))}


def test_every_domain_is_pinned() -> None:
    assert sorted(FACES) == sorted(domains())


@pytest.mark.parametrize("name", sorted(FACES))
def test_face_is_as_pinned(name: str) -> None:
    face = importlib.import_module(name)
    exported = sorted(face.__all__)
    assert exported == FACES[name], f"{name}.__all__ changed; update tests/architecture/faces/ if that is intended"
    assert [n for n in exported if not hasattr(face, n)] == []
    for declared in ("DEPENDS_ON", "TABLES", "POLICY", "SERVICES"):
        assert declared in exported, f"{name} does not export {declared}"
