"""Every exception class the edge daemon defines derives from its one root, EdgeError (under EmmaError)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edge_daemon
from core.errors import EmmaError
from edge_daemon.errors import EdgeError


def _edge_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(edge_daemon.__path__, "edge_daemon."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("edge_daemon."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_edge_exception_derives_from_edge_error() -> None:
    classes = _edge_exception_classes()
    assert len(classes) > 10  # the walk did find the drivers' errors too
    assert [c.__qualname__ for c in classes if not issubclass(c, EdgeError)] == []
    assert issubclass(EdgeError, EmmaError)
