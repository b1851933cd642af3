"""Backtests on the real household series (tests/data/load/SOURCES.md): the load model beats
persistence and the same time last week in every horizon band; the PV model (no weather, clear sky
x learnt correction) beats persistence. The printed table is the one in docs/forecast-models.md."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.forecast.backtest import BacktestResult, backtest
from services.forecast.errors import ForecastInputError
from services.forecast.model import PvArray, PvSystem

DATA = Path(__file__).parents[2] / "data" / "load" / "emhass_household_pv_load_30min_2022-05-08_15.csv"
# The series has no site description. Assumed: central France (its +02:00 offset), one south-facing
# 30 degree array; its size does not matter, the learnt correction scales it to the measurements.
HOUSEHOLD_PV = PvSystem(45.75, 4.85, 200.0, (PvArray(30.0, 180.0, 5.0),))


def _column(name: str) -> list[tuple[datetime, float]]:
    with DATA.open(newline="") as f:
        return [(datetime.fromisoformat(row["timestamp"]), float(row[name])) for row in csv.DictReader(f)]


def _table(result: BacktestResult) -> str:
    issued = f"{result.first_issue:%Y-%m-%d %H:%M} .. {result.last_issue:%Y-%m-%d %H:%M} UTC"
    lines = [f"{result.model}: {result.issues} forecasts issued {issued}"]
    lines.append("| horizon | forecast | n | MAE W | RMSE W | nMAE | bias W | skill vs persistence |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for band in result.bands:
        rows = [("model", band.model), ("persistence", band.persistence), ("same time yesterday", band.yesterday)]
        rows += [("same time last week", band.last_week), ("model, where last week is known", band.model_vs_last_week)]
        for name, s in rows:
            if s is None:
                continue
            skill = "" if name == "persistence" or s.skill is None else f"{s.skill:.3f}"
            if name.startswith("model, where"):
                skill = f"{s.skill:.3f} (vs last week)" if s.skill is not None else ""
            nmae = "" if s.nmae is None else f"{s.nmae:.3f}"
            cells = f"{s.n} | {s.mae_w:.0f} | {s.rmse_w:.0f} | {nmae} | {s.bias_w:.0f} | {skill}"
            lines.append(f"| {band.label} | {name} | {cells} |")
    return "\n".join(lines)


def test_load_model_beats_persistence_and_last_week_on_the_real_household() -> None:
    result = backtest(
        _column("P_Load"),
        "load",
        issue_every=timedelta(hours=6),
        horizon_slots=192,
        country="FR",
        time_zone="Europe/Paris",
    )
    print("\n" + _table(result))
    assert result.issues == 28 and len(result.bands) == 4
    for band in result.bands:
        assert band.model.skill is not None and band.model.skill > 0.0, band.label
        assert band.model_vs_last_week is not None and band.model_vs_last_week.skill is not None
        assert band.model_vs_last_week.skill > 0.0, band.label


def test_pv_model_beats_persistence_on_the_real_household() -> None:
    result = backtest(_column("P_PV"), "pv", issue_every=timedelta(hours=6), horizon_slots=192, system=HOUSEHOLD_PV)
    print("\n" + _table(result))
    assert result.degraded == ("no weather forecast: clear-sky model x correction",)
    for band in result.bands:
        assert band.model.skill is not None and band.model.skill > 0.0, band.label


def test_bad_input() -> None:
    history = _column("P_Load")
    with pytest.raises(ForecastInputError) as model:
        backtest(history, "wind", issue_every=timedelta(hours=6), horizon_slots=8)  # type: ignore[arg-type]
    assert model.value.field == "model"
    with pytest.raises(ForecastInputError) as system:
        backtest(history, "pv", issue_every=timedelta(hours=6), horizon_slots=8)
    assert system.value.field == "system"
    with pytest.raises(ForecastInputError) as horizon:
        backtest(
            history, "load", issue_every=timedelta(hours=6), horizon_slots=289, country="FR", time_zone="Europe/Paris"
        )
    assert horizon.value.field == "horizon_slots"
    with pytest.raises(ForecastInputError) as short:
        backtest(
            history[:10],
            "load",
            issue_every=timedelta(hours=6),
            horizon_slots=8,
            country="FR",
            time_zone="Europe/Paris",
        )
    assert short.value.field == "history"
