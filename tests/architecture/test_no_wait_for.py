"""The hand-written code bounds a wait with `asyncio.timeout`, never with `asyncio.wait_for`.

On Python 3.11 (EMMA's interpreter), `asyncio.wait_for` returns the result when the awaited thing
finished in the same few loop steps as a cancellation of the waiting task, and drops the cancellation.
A loop around it then keeps running after its stop, and whatever waits for it waits forever: the
edge's ack pump and polling devices hung shutdowns that way, and the LISTEN tasks, WatchCommand and
the CAN BMS poll did the same in their regression tests. `asyncio.timeout` raises the same
TimeoutError and keeps the cancellation. The tests may still use wait_for as a guard around a single
await (a dropped cancellation there ends nothing).
"""

from __future__ import annotations

import ast

from tests.architecture.imports import ROOT, modules, top

REASON = (
    "asyncio.wait_for drops a cancellation on Python 3.11 when the awaited thing finishes in the same loop "
    "steps, so a stopped task runs on; use `async with asyncio.timeout(s): await ...` (same TimeoutError)"
)


def wait_for_uses(source: str) -> list[int]:
    """The lines of `source` that use asyncio.wait_for (called, imported or passed on)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "wait_for"
            and isinstance(node.value, ast.Name)
            and node.value.id == "asyncio"
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module in ("asyncio", "asyncio.tasks"):
            lines += [node.lineno for alias in node.names if alias.name == "wait_for"]
    return sorted(lines)


def test_the_check_sees_every_way_of_using_wait_for() -> None:
    source = (
        "import asyncio\n"
        "from asyncio import wait_for\n"
        "async def f(e):\n"
        "    await asyncio.wait_for(e.wait(), 1)\n"
        "    bound = asyncio.wait_for\n"
        "    await page.wait_for_selector('x')\n"  # another library's method of that name is fine
        "    # asyncio.wait_for in a comment is fine\n"
    )
    assert wait_for_uses(source) == [2, 4, 5]


def test_the_hand_written_code_does_not_use_asyncio_wait_for() -> None:
    found = [
        f"{module.path.relative_to(ROOT)}:{line}"
        for name, module in modules().items()
        if top(name) != "tests"
        for line in wait_for_uses(module.path.read_text(encoding="utf-8"))
    ]
    assert found == [], REASON
