"""The layer map of docs/architecture.md, enforced on every import of the hand-written code.

Fails on an import that goes up a layer, a domain that imports another domain's private modules or a
domain it did not declare, and a cycle between packages or between modules.
"""

from __future__ import annotations

import pytest

from tests.architecture.imports import GENERATED, Module, cycles, emma_imports, literal_strings, modules, top

# Top-level packages and the EMMA packages each may import (besides itself and gen/).
TOP_LAYERS: dict[str, set[str]] = {
    "core": set(),
    "services": {"core"},
    "gateway": {"core"},
    "edge_daemon": {"core"},
    "launcher": {"core", "services", "gateway", "edge_daemon"},
    # The benchmarks drive real processes and may reach into any runtime package, never into tests.
    "bench": {"core", "services", "gateway", "edge_daemon", "launcher"},
    "tools": set(),
    "tests": {"core", "services", "gateway", "edge_daemon", "launcher", "tools"},
}

# services/: the kernel every domain may use, the composition that wires the domains into a server,
# and the domains (every other subpackage), each of which declares DEPENDS_ON and TABLES.
SERVICES_KERNEL = {"errors", "names", "pagination", "platform", "migrations"}
SERVICES_COMPOSITION = {"catalog", "cloud"}


def _unit(name: str) -> str:
    """services.registry.servicer -> services.registry; edge_daemon.drivers.modbus.link -> edge_daemon.drivers."""
    return ".".join(name.split(".")[:2])


def domains() -> dict[str, Module]:
    """services.<domain> -> its package module (the face, where DEPENDS_ON and TABLES are declared)."""
    found = {}
    for name, module in modules().items():
        parts = name.split(".")
        if parts[0] == "services" and len(parts) == 2 and module.is_package and parts[1] not in SERVICES_KERNEL:
            found[name] = module
    return found


def declared_dependencies() -> dict[str, set[str]]:
    return {
        name: {f"services.{d}" for d in literal_strings(face.assigns.get("DEPENDS_ON"))}
        for name, face in domains().items()
    }


def violations() -> set[str]:
    found: set[str] = set()
    mods = modules()
    doms = domains()
    depends = declared_dependencies()
    for name, module in mods.items():
        pkg = top(name)
        for imp in emma_imports(module):
            target_pkg = top(imp.target)
            if target_pkg in GENERATED or target_pkg == pkg:
                pass
            elif target_pkg not in TOP_LAYERS[pkg]:
                found.add(f"{name} imports {imp.target} ({pkg} may not import {target_pkg})")
                continue
            if pkg != "services" or target_pkg != "services":
                continue
            src, dst = _unit(name), _unit(imp.target)
            src_leaf, dst_leaf = src.split(".")[-1], dst.split(".")[-1]
            if src == dst or (src_leaf in SERVICES_KERNEL and dst_leaf in SERVICES_KERNEL):
                continue
            if dst_leaf in SERVICES_KERNEL and (src in doms or src_leaf in SERVICES_COMPOSITION):
                continue
            if src_leaf in SERVICES_KERNEL:
                found.add(f"{name} imports {imp.target} (the services kernel may not import a domain)")
            elif dst in doms and imp.target != dst:
                found.add(f"{name} imports {imp.target} (private module of {dst})")
            elif src_leaf in SERVICES_COMPOSITION:
                if dst not in doms and dst_leaf not in SERVICES_COMPOSITION:
                    found.add(f"{name} imports {imp.target} (not a domain face)")
            elif src in doms:
                if dst not in depends[src]:
                    found.add(f"{name} imports {imp.target} ({src} does not declare {dst} in DEPENDS_ON)")
            else:
                found.add(f"{name} imports {imp.target} ({src} is in no layer of services/)")
    for name in mods:
        parts = name.split(".")
        loose = parts[0] == "services" and len(parts) == 2 and not mods[name].is_package
        if loose and parts[1] not in SERVICES_KERNEL | SERVICES_COMPOSITION:
            found.add(f"{name} is in no layer of services/ (kernel, a domain, or the composition)")
    for cycle in cycles(depends):
        found.add(f"cycle in DEPENDS_ON: {' -> '.join(cycle)}")
    return found


def package_cycles() -> set[str]:
    """Cycles between the packages (second-level units) of each runtime package, type-only imports too."""
    graph: dict[str, set[str]] = {}
    for name, module in modules().items():
        if top(name) not in TOP_LAYERS or top(name) in ("tests", "bench", "tools"):
            continue
        for imp in emma_imports(module):
            src, dst = _unit(name), _unit(imp.target)
            if src != dst and top(src) == top(dst):
                graph.setdefault(src, set()).add(dst)
    return {"package cycle: " + " <-> ".join(c) for c in cycles(graph)}


def module_cycles() -> set[str]:
    """Cycles between modules (`if TYPE_CHECKING:` imports too: a type-only cycle is still a tangle)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, module in mods.items():
        if top(name) in ("tests", "bench", "tools"):
            continue
        for imp in emma_imports(module):
            if imp.target in mods and imp.target != name:
                graph.setdefault(name, set()).add(imp.target)
    # A package's __init__ re-exporting its own modules is not a design cycle.
    for name, succ in graph.items():
        graph[name] = {s for s in succ if not (mods[name].is_package and s.startswith(name + "."))}
    return {"module cycle: " + " <-> ".join(c) for c in cycles(graph)}


def test_every_domain_declares_its_dependencies_and_tables() -> None:
    missing = [
        f"{name}: {key}"
        for name, face in domains().items()
        for key in ("DEPENDS_ON", "TABLES")
        if key not in face.assigns
    ]
    assert missing == []


@pytest.mark.parametrize("check", [violations, package_cycles, module_cycles], ids=lambda f: f.__name__)
def test_layer_map_holds(check: object) -> None:
    assert callable(check)
    found = check()
    assert sorted(found) == [], "imports that break the layer map (docs/architecture.md):\n" + "\n".join(sorted(found))
