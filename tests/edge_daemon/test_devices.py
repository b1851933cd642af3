"""Simulators: physical limits, efficiency, sun position, profiles, sessions, and energy conservation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pvlib
import pytest

from edge_daemon.channels import Category, ChannelStore
from edge_daemon.clock import ManualClock
from edge_daemon.devices.battery import BatteryParams, SimBattery
from edge_daemon.devices.ev_charger import EvChargerParams, SimEvCharger
from edge_daemon.devices.load import LoadParams, SimLoad
from edge_daemon.devices.pv import PvParams, SimPvInverter
from tests.support.sim import MIDSUMMER, Site, site_config

BERLIN = ZoneInfo("Europe/Berlin")


def _battery(**kw: float) -> SimBattery:
    params = dict(
        capacity_wh=10_000.0,
        max_charge_w=5_000.0,
        max_discharge_w=4_000.0,
        efficiency=0.81,
        min_soc=10.0,
        max_soc=90.0,
        initial_soc=50.0,
    )
    params.update(kw)
    return SimBattery("bat", BatteryParams(**params))  # type: ignore[arg-type]


def _drive(
    device: SimBattery | SimEvCharger,
    store: ChannelStore,
    setpoint: float,
    seconds: int,
    start: float = 0.0,
    step: float = 1.0,
) -> float:
    t = start
    for _ in range(int(seconds / step)):
        device.read(store, t)
        store.set(device.address("SetActivePower"), setpoint, category=Category.OUTPUT)
        device.write(store)
        t += step
    device.read(store, t)
    return t


def test_battery_round_trip_efficiency() -> None:
    bat = _battery(initial_soc=50.0)
    store = ChannelStore()
    e0 = bat.energy_wh
    t = _drive(bat, store, -1_000.0, 3_600)  # 1 kWh in from the AC side
    assert bat.energy_wh - e0 == pytest.approx(900.0, rel=1e-9)  # sqrt(0.81) of it is stored
    _drive(bat, store, 810.0, 3_600, start=t)  # 0.81 kWh out...
    assert bat.energy_wh == pytest.approx(e0, rel=1e-9)  # ...empties exactly what was stored: 81 % round trip


def test_battery_clamps_setpoints_at_power_limits() -> None:
    bat = _battery()
    store = ChannelStore()
    bat.read(store, 0.0)
    for setpoint, applied in [(10_000.0, 4_000.0), (-10_000.0, -5_000.0), (1_234.0, 1_234.0)]:
        store.set("bat/SetActivePower", setpoint, category=Category.OUTPUT)
        bat.write(store)
        bat.read(store, 1.0)
        assert store.get("bat/ActivePower").value == applied  # type: ignore[union-attr]


def test_battery_stops_at_soc_limits_and_exposes_dynamic_limits() -> None:
    bat = _battery(initial_soc=89.0)
    store = ChannelStore()
    t = _drive(bat, store, -5_000.0, 3_600)
    snap = store.snapshot()
    assert bat.soc <= 90.0 + 1e-9
    assert snap["bat/Soc"].value == pytest.approx(90.0, abs=0.01)
    # Full: the BMS allows no more charging, the battery is idle although asked to charge.
    assert snap["bat/MaxChargePower"].value == pytest.approx(0.0, abs=1.0)
    assert abs(snap["bat/ActivePower"].value) <= 1.0  # type: ignore[arg-type]
    assert snap["bat/MaxDischargePower"].value == 4_000.0
    _drive(bat, store, 4_000.0, 4 * 3_600, start=t)
    assert bat.soc >= 10.0 - 1e-9
    assert store.get("bat/MaxDischargePower").value == pytest.approx(0.0, abs=1.0)  # type: ignore[union-attr]


def test_battery_never_leaves_soc_bounds_with_long_cycles() -> None:
    # A cycle far longer than the taper: the integration itself must stop at the bound.
    bat = _battery(initial_soc=50.0)
    store = ChannelStore()
    _drive(bat, store, -5_000.0, 20 * 3_600, step=900.0)
    assert 90.0 - 1e-9 <= bat.soc <= 90.0 + 1e-9


def test_pv_follows_the_sun_and_clouds() -> None:
    pv = SimPvInverter("pv", PvParams(peak_power_w=8_000.0), 52.52, 13.405)
    noon = datetime(2024, 6, 21, 11, 0, tzinfo=UTC).timestamp()
    midnight = datetime(2024, 6, 21, 23, 0, tzinfo=UTC).timestamp()
    winter_noon = datetime(2024, 12, 21, 11, 0, tzinfo=UTC).timestamp()
    assert pv.available_power(midnight) == 0.0
    summer = pv.available_power(noon)
    assert 4_000 < summer <= 8_000
    assert 0 < pv.available_power(winter_noon) < summer
    # Cross-check against pvlib directly: same clear-sky plane-of-array irradiance at noon.
    times = pd.DatetimeIndex([pd.Timestamp(noon, unit="s", tz="UTC")])
    loc = pvlib.location.Location(52.52, 13.405)
    sp = loc.get_solarposition(times)
    cs = loc.get_clearsky(times, solar_position=sp)
    poa = pvlib.irradiance.get_total_irradiance(
        30, 180, sp["apparent_zenith"], sp["azimuth"], cs["dni"], cs["ghi"], cs["dhi"]
    )["poa_global"].iloc[0]
    assert summer == pytest.approx(8_000 * poa / 1000 * 0.86, rel=0.01)
    pv.cloudiness = 1.0
    assert pv.available_power(noon) == pytest.approx(summer * 0.25, rel=1e-9)


def test_pv_curtailment_limit() -> None:
    pv = SimPvInverter("pv", PvParams(peak_power_w=8_000.0), 52.52, 13.405)
    store = ChannelStore()
    noon = datetime(2024, 6, 21, 11, 0, tzinfo=UTC).timestamp()
    store.set("pv/ActivePowerLimit", 1_000.0, category=Category.OUTPUT)
    pv.write(store)
    pv.read(store, noon)
    assert store.get("pv/ActivePower").value == 1_000.0  # type: ignore[union-attr]
    assert store.get("pv/AvailablePower").value > 4_000  # type: ignore[operator, union-attr]


def test_load_profile_is_local_time_and_seeded() -> None:
    params = LoadParams(mean_power_w=600.0, noise_w=50.0, seed=7)
    a, b = SimLoad("l", params, BERLIN), SimLoad("l", params, BERLIN)
    sa, sb = ChannelStore(), ChannelStore()
    values_a, values_b = [], []
    for minute in range(0, 24 * 60, 15):
        t = MIDSUMMER + minute * 60
        a.read(sa, t)
        b.read(sb, t)
        values_a.append(sa.get("l/ActivePower").value)  # type: ignore[union-attr]
        values_b.append(sb.get("l/ActivePower").value)  # type: ignore[union-attr]
    assert values_a == values_b  # same seed, same day
    assert all(v >= 0 for v in values_a)  # type: ignore[operator]
    quiet = SimLoad("q", LoadParams(mean_power_w=600.0), BERLIN)
    evening = datetime(2024, 6, 21, 19, 0, tzinfo=BERLIN).timestamp()
    night = datetime(2024, 6, 21, 3, 0, tzinfo=BERLIN).timestamp()
    assert quiet.profile_power(evening) > 2 * quiet.profile_power(night)
    day = [quiet.profile_power(MIDSUMMER + s) for s in range(0, 86_400, 60)]
    assert sum(day) / len(day) == pytest.approx(600.0, rel=0.01)


def test_ev_charger_session_and_energy_need() -> None:
    ev = SimEvCharger("ev", EvChargerParams(max_power_w=11_000, min_power_w=1_380, daily_sessions=False), BERLIN)
    store = ChannelStore()
    ev.read(store, 0.0)
    assert store.get("ev/MaxPower").value == 0.0  # type: ignore[union-attr]
    ev.plug_in(1_000.0)
    t = _drive(ev, store, 1_000.0, 60)  # below the minimum current: paused
    assert store.get("ev/ActivePower").value == 0.0  # type: ignore[union-attr]
    t = _drive(ev, store, 20_000.0, 120, start=t)  # clamped to 11 kW; 1 kWh needs ~5.5 min
    assert store.get("ev/ActivePower").value == 11_000.0  # type: ignore[union-attr]
    _drive(ev, store, 20_000.0, 600, start=t)
    assert ev.energy_needed_wh == 0.0
    assert store.get("ev/ActivePower").value == 0.0  # type: ignore[union-attr]
    assert store.get("ev/MaxPower").value == 0.0  # type: ignore[union-attr]


def test_ev_daily_sessions_follow_local_time() -> None:
    ev = SimEvCharger("ev", EvChargerParams(arrival_hour=18, departure_hour=7), BERLIN)
    store = ChannelStore()
    ev.read(store, datetime(2024, 6, 21, 12, tzinfo=BERLIN).timestamp())
    assert ev.plugged is False
    ev.read(store, datetime(2024, 6, 21, 18, 30, tzinfo=BERLIN).timestamp())
    assert ev.plugged is True and ev.energy_needed_wh == 20_000
    ev.read(store, datetime(2024, 6, 22, 7, 30, tzinfo=BERLIN).timestamp())
    assert ev.plugged is False


def _site_power(snap: dict[str, float]) -> tuple[float, float]:
    pv = snap["pv_1/ActivePower"]
    grid = snap["grid_1/ActivePower"]
    battery = snap["battery_1/ActivePower"]
    supply = pv + max(0.0, grid) + max(0.0, battery)
    demand = snap["load_1/ActivePower"] + snap["ev_1/ActivePower"] + max(0.0, -battery) + max(0.0, -grid)
    return supply, demand


def test_energy_is_conserved_every_cycle_over_a_simulated_day(tmp_path: Path) -> None:
    site = Site(site_config(tmp_path))
    bat = site.device("battery_1")
    assert isinstance(bat, SimBattery)
    step = 30.0
    supply_wh = demand_wh = 0.0
    soc_min, soc_max = 100.0, 0.0
    pv_peak = 0.0
    for _ in range(int(86_400 / step)):
        ctx = site.step(step)
        snap = {
            k: float(v.value)
            for k, v in ctx.snapshot.items()  # type: ignore[arg-type]
            if k.endswith("Power") or k.endswith("Soc")
        }
        supply, demand = _site_power(snap)
        # PV + import + discharge = load + EV + charge + export, in this cycle's readings.
        assert supply == pytest.approx(demand, rel=1e-9, abs=1e-6)
        supply_wh += supply * step / 3600
        demand_wh += demand * step / 3600
        assert 10.0 - 1e-9 <= snap["battery_1/Soc"] <= 95.0 + 1e-9
        assert -5_000 <= snap["battery_1/ActivePower"] <= 5_000
        assert 0 <= snap["ev_1/ActivePower"] <= 11_000
        assert 0 <= snap["pv_1/ActivePower"] <= 8_000
        soc_min, soc_max = min(soc_min, snap["battery_1/Soc"]), max(soc_max, snap["battery_1/Soc"])
        pv_peak = max(pv_peak, snap["pv_1/ActivePower"])
    assert supply_wh == pytest.approx(demand_wh, rel=1e-9)
    # The day really exercised the site: the sun shone, the battery moved through its range.
    assert pv_peak > 3_000
    assert soc_max - soc_min > 30
    assert site.cycle.stats.errors == 0


def test_grid_meter_balances_every_member(tmp_path: Path) -> None:
    site = Site(site_config(tmp_path))
    meter = site.device("grid_1")
    assert sorted(meter.members) == [  # type: ignore[attr-defined]
        "battery_1/ActivePower",
        "ev_1/ActivePower",
        "load_1/ActivePower",
        "pv_1/ActivePower",
    ]
    # Midnight, no controllers acting yet: the meter imports exactly load + EV.
    ctx = site.step(1.0)
    grid = ctx.value("grid_1/ActivePower")
    assert grid == pytest.approx(
        (ctx.value("load_1/ActivePower") or 0)
        + (ctx.value("ev_1/ActivePower") or 0)
        - (ctx.value("pv_1/ActivePower") or 0)
        - (ctx.value("battery_1/ActivePower") or 0)
    )
    assert ctx.value("grid_1/ImportPower") == max(0.0, grid or 0.0)


def test_devices_accept_an_injected_clock() -> None:
    clock = ManualClock(MIDSUMMER)
    store = ChannelStore(clock)
    bat = _battery()
    bat.read(store, clock.time())
    clock.advance(3_600)
    bat.read(store, clock.time())
    cv = store.get("bat/Soc")
    assert cv is not None and cv.timestamp == MIDSUMMER + 3_600
