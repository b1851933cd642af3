"""The models run in one worker process by default (EMMA_FORECAST_MODEL_PROCESS, on), so a round of
sites does not hold the server's GIL; `off` keeps them in a thread; a worker that dies fails that run
with a ForecastError and the next run gets a new worker."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime

import pytest

from services.forecast import runner
from services.forecast.config import ForecastConfigError
from services.forecast.errors import ForecastError
from services.names import SiteName
from services.registry import SiteProfile

PROFILE = SiteProfile(SiteName("acme", "s"), 40.4, -3.7, "Europe/Madrid", "ES", None)
ISSUE = datetime(2026, 12, 5, 6, tzinfo=UTC)


def test_a_worker_process_by_default_a_thread_when_off_and_a_bad_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "_default_executor", None)
    monkeypatch.delenv("EMMA_FORECAST_MODEL_PROCESS", raising=False)
    executor = runner.default_executor()
    try:
        assert isinstance(executor, ProcessPoolExecutor)
        assert executor.submit(os.getpid).result(timeout=120) != os.getpid()
        assert runner.default_executor() is executor  # one per process
    finally:
        executor.shutdown()
    monkeypatch.setattr(runner, "_default_executor", None)
    monkeypatch.setenv("EMMA_FORECAST_MODEL_PROCESS", "off")
    executor = runner.default_executor()
    assert isinstance(executor, ThreadPoolExecutor)
    executor.shutdown()
    monkeypatch.setattr(runner, "_default_executor", None)
    monkeypatch.setenv("EMMA_FORECAST_MODEL_PROCESS", "sometimes")
    with pytest.raises(ForecastConfigError):
        runner.default_executor()


async def test_a_model_process_that_died_fails_one_run_and_the_next_gets_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "_default_executor", None)
    monkeypatch.delenv("EMMA_FORECAST_MODEL_PROCESS", raising=False)
    dead = runner.default_executor()
    with pytest.raises(BrokenProcessPool):
        dead.submit(os._exit, 1).result(timeout=120)
    with pytest.raises(ForecastError, match="model process stopped"):
        await runner.make_forecasts(PROFILE, {"site_load"}, ISSUE, 8, [], None)
    fresh = runner.default_executor()
    try:
        assert fresh is not dead
        made = await runner.make_forecasts(PROFILE, {"site_load"}, ISSUE, 8, [], None)
        assert [m.kind for m in made] == ["site_load"] and made[0].forecast.slots == 8
    finally:
        fresh.shutdown()
