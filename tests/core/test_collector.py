"""The garbage collector's tuning for long-running servers (core/collector.py)."""

from __future__ import annotations


def test_the_garbage_collector_is_tuned_for_a_long_running_server() -> None:
    import gc
    import weakref

    from core.collector import YOUNG_THRESHOLD, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0  # what was alive at start-up is out of the collector's way

        class Node:
            other: object = None

        # Reference cycles made afterwards are still collected.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
