"""The optimizer: schedules for every battery, PV array, EV charger and flexible load of a site or a
community over 15-minute slots, solved with pyomo + HiGHS (docs/optimizer.md). The model (inputs.py,
checks.py, model.py, baseline.py, solve.py, plan.py) is pure: no I/O, no clock.
"""

from __future__ import annotations

from services.identity import Access
from services.platform.registration import ServiceSpec

# What other packages may use of optimizer; everything else in services/optimizer/ is private.
__all__ = ["DEPENDS_ON", "POLICY", "SERVICES", "TABLES"]

# The services this domain may import (their package faces); see docs/architecture.md.
DEPENDS_ON: tuple[str, ...] = ("identity",)
# The tables this domain alone reads and writes (none yet: runs are not stored in this release).
TABLES: tuple[str, ...] = ()
# The gRPC services this domain serves (services/catalog.py hosts them).
SERVICES: tuple[ServiceSpec, ...] = ()
POLICY: dict[str, Access] = {}
