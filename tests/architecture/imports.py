"""Static facts about the source tree for the architecture tests: modules, their imports, their SQL.

Everything is read with `ast`, nothing is imported, so a module with import-time side effects or a
broken import still gets checked.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The hand-written top-level packages; `emma` and `emma_sdk` are the generated ones under gen/.
PACKAGES = ("core", "services", "gateway", "edge_daemon", "launcher", "bench", "tools", "tests")
GENERATED = ("emma", "emma_sdk")

# A string is SQL when it has one of these words; only SQL is scanned for schema.table references.
_SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|JOIN|TRUNCATE|CALL|COPY|LISTEN|NOTIFY)\b")
_TABLE_REF = re.compile(r"\b(app|identity|telemetry|market|forecast|optimizer|alarm)\.([a-z_][a-z0-9_]*)\b")


@dataclass(frozen=True)
class Import:
    target: str  # the imported module ("services.identity.tokens"), or the package a name came from
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[Import] = field(default_factory=list)
    sql: list[tuple[int, str]] = field(default_factory=list)  # (line, string)
    assigns: dict[str, ast.expr] = field(default_factory=dict)  # module-level NAME = <expr>


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: Module, known: set[str]) -> None:
        self.module = module
        self.known = known
        self.type_only = 0

    def visit_If(self, node: ast.If) -> None:
        guard = ast.unparse(node.test)
        if guard in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.module.imports.append(Import(alias.name, node.lineno, self.type_only > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.module, node)
        for alias in node.names:
            # `from services.identity import tokens` imports a module; `... import Caller` a name.
            candidate = f"{base}.{alias.name}"
            target = candidate if candidate in self.known else base
            self.module.imports.append(Import(target, node.lineno, self.type_only > 0))

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _SQL_WORDS.search(node.value):
            self.module.sql.append((node.lineno, node.value))

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if _SQL_WORDS.search(text):
            self.module.sql.append((node.lineno, text))


@cache
def modules() -> dict[str, Module]:
    """Every hand-written module of the repository by dotted name."""
    found: dict[str, Module] = {}
    trees: dict[str, ast.Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            name, is_package = _module_name(path)
            found[name] = Module(name, path, is_package)
            trees[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    known = set(found)
    for name, tree in trees.items():
        module = found[name]
        _Visitor(module, known).visit(tree)
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                module.assigns[stmt.targets[0].id] = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                module.assigns[stmt.target.id] = stmt.value
    return found


def top(name: str) -> str:
    return name.split(".", 1)[0]


def emma_imports(module: Module) -> Iterator[Import]:
    """The imports of EMMA's own packages (hand-written or generated) a module makes."""
    for imp in module.imports:
        if top(imp.target) in PACKAGES or top(imp.target) in GENERATED:
            yield imp


def table_refs(sql: str) -> set[str]:
    return {f"{schema}.{table}" for schema, table in _TABLE_REF.findall(sql)}


def literal_strings(expr: ast.expr | None) -> tuple[str, ...]:
    """The strings of a module-level tuple/list/set literal (DEPENDS_ON, TABLES)."""
    if expr is None:
        return ()
    value = ast.literal_eval(expr)
    return tuple(sorted(str(v) for v in value))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)
