"""Python's garbage collector, tuned for a long-running server (`emma serve`, `emma up`, `emma gateway`).

With the default thresholds (700, 10, 10) a replica holding 1,000 edge streams ran a full (oldest
generation) collection every ten seconds or so, each pausing the event loop for up to ~145 ms
(measured with gc.callbacks during `python -m bench.ingest --quick`): every ack in flight waited
for it, and those pauses were a large part of the ack p99. Two changes cut them:
- freeze: everything alive once the server is up (modules, descriptors, the generated code's
  classes, pools) moves to the permanent generation, so no collection walks it again;
- a higher first threshold: young collections run a tenth as often, so the older generations fill,
  and get walked, a tenth as often; each young collection stays short because most objects of a
  request die young.
Reference cycles are still collected; the process only trades a little memory for fewer pauses.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000


def tune_garbage_collector() -> None:
    """Call once the server is up and before traffic arrives."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
