"""The everyday solve (HiGHS arrays, direct.py) needs no pyomo, so a process hosting the optimizer does
not import it: pyomo cost every such process 1.2-2.1 s of start-up and 23 MiB (session 17's machine).
pyomo comes in with the reference solve and with the explanation of an infeasible problem."""

from __future__ import annotations

import json
import subprocess
import sys

from pyomo.contrib.appsi.solvers import Highs

from services.optimizer.solve import solver_version

_PROBE = """
import json, sys
from datetime import UTC, datetime
import services.optimizer.servicer
from services.optimizer.errors import InfeasibleError
from services.optimizer.inputs import Battery, Prices, Problem, Site
from services.optimizer.solve import solve

start = datetime(2026, 1, 1, tzinfo=UTC)
site = Site("s1", (0.0, 0.0, 4.0, 4.0), 100.0, 100.0)
plan = solve(Problem(start, 4, Prices((0.1, 0.1, 0.3, 0.3), (0.0,) * 4), (site,),
                     batteries=(Battery("b1", "s1", 10, 0, 4, 4),)))
after_solve = "pyomo" in sys.modules
# A load the grid cannot carry: only the elastic pyomo model can say which limit is short.
tight = Site("s1", (0.0, 0.0, 50.0, 50.0), 10.0, 10.0)
try:
    solve(Problem(start, 4, Prices((0.1,) * 4, (0.0,) * 4), (tight,)))
    conflicts = []
except InfeasibleError as exc:
    conflicts = exc.conflicts
print(json.dumps({"objective": plan.objective, "pyomo_after_solve": after_solve,
                  "conflicts": conflicts, "pyomo_after_explain": "pyomo" in sys.modules}))
"""


def test_a_feasible_solve_imports_no_pyomo_and_an_infeasible_one_still_explains() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout)
    assert seen["objective"] > 0
    assert seen["pyomo_after_solve"] is False
    assert seen["conflicts"] and "import limit is 10 kW" in seen["conflicts"][0], seen["conflicts"]
    assert seen["pyomo_after_explain"] is True


def test_the_stored_solver_version_is_the_one_pyomo_reported() -> None:
    # Runs stored before the change carry pyomo's HiGHS interface's version string; new runs must match.
    assert solver_version() == ".".join(str(x) for x in Highs().version())
