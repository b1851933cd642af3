"""The schedule follower on the simulated demo site with a flexible load, driven by a manual clock: a PV
curtailment and a flexible load's setpoint are applied while their entries are valid and cleared when
they end (a gap, the schedule's expiry, a replacement), so the devices go back to what they do
unmanaged; a value someone else wrote meanwhile stays. The flexible load simulator on its own: full
power from its window's start when unmanaged, paused and moved by a setpoint, its job ended with the
window."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_daemon.channels import ChannelStore
from edge_daemon.clock import ManualClock
from edge_daemon.config import demo_site_dict, parse_config
from edge_daemon.controllers.schedule_follower import (
    SafeMode,
    Schedule,
    ScheduleEntry,
    ScheduleFollower,
    ScheduleFollowerParams,
)
from edge_daemon.devices.flexible_load import FlexibleLoadParams, SimFlexibleLoad
from edge_daemon.errors import SiteConfigError
from tests.support.sim import MIDSUMMER, Site

NOON_UTC = MIDSUMMER + 12 * 3600  # the site below is at longitude 0, in UTC
LIMIT = "pv_1/ActivePowerLimit"
BOILER = "boiler_1/SetActivePower"


def _site(tmp_path: Path) -> tuple[Site, ScheduleFollower]:
    doc = demo_site_dict()
    doc["site"].update({"timezone": "UTC", "latitude": 0.0, "longitude": 0.0})
    doc["devices"].insert(
        -1,
        {
            "id": "boiler_1",
            "type": "sim_flexible_load",
            "max_power_w": 3000,
            "energy_wh": 2000,
            "window_start_hour": 12,
            "window_end_hour": 14,
        },
    )
    site = Site(parse_config(doc, tmp_path / "site.toml"), start=NOON_UTC, controllers=[])
    follower = ScheduleFollower(ScheduleFollowerParams("battery_1", SafeMode.HOLD), site.devices)
    site.cycle.controllers = (follower,)
    return site, follower


def test_a_curtailment_and_a_pause_last_only_as_long_as_their_entries(tmp_path: Path) -> None:
    site, follower = _site(tmp_path)
    site.step()
    site.step()
    # Unmanaged: the inverter gives all the sun offers, the boiler runs at full power in its window.
    assert site.value("pv_1/ActivePower") == site.value("pv_1/AvailablePower") > 1000
    assert site.value("boiler_1/ActivePower") == 3000.0
    now = site.clock.time()
    follower.set_schedule(
        Schedule(
            "s1",
            (
                ScheduleEntry(LIMIT, now, now + 60, 400.0),
                # A gap of a minute, then curtailed again.
                ScheduleEntry(LIMIT, now + 120, now + 180, 300.0),
                ScheduleEntry(BOILER, now, now + 180, 0.0),
            ),
        )
    )
    site.step(1)
    site.step(1)
    assert site.value(LIMIT) == 400.0 and site.value("pv_1/ActivePower") == 400.0
    assert site.value(BOILER) == 0.0 and site.value("boiler_1/ActivePower") == 0.0
    site.step(60)  # in the gap: the limit is lifted, the boiler still paused
    site.step(1)
    assert site.value(LIMIT) is None and site.value("pv_1/ActivePower") > 1000
    assert site.value("boiler_1/ActivePower") == 0.0
    site.step(60)
    site.step(1)
    assert site.value(LIMIT) == 300.0 and site.value("pv_1/ActivePower") == 300.0
    site.step(60)  # past the schedule: everything handed back
    site.step(1)
    assert site.value(LIMIT) is None and site.value(BOILER) is None
    assert site.value("pv_1/ActivePower") > 1000 and site.value("boiler_1/ActivePower") == 3000.0


def test_a_replaced_schedule_hands_back_its_channels_but_not_what_others_wrote(tmp_path: Path) -> None:
    site, follower = _site(tmp_path)
    now = site.clock.time()
    follower.set_schedule(
        Schedule("s1", (ScheduleEntry(LIMIT, now, now + 3600, 500.0), ScheduleEntry(BOILER, now, now + 3600, 1000.0)))
    )
    site.step()
    site.step()
    assert site.value("pv_1/ActivePower") == 500.0 and site.value("boiler_1/ActivePower") == 1000.0
    # Someone else (an operator's command, say) sets the boiler after the follower did.
    site.store.set(BOILER, 2500.0, ts=site.clock.time())
    # The new plan curtails nothing and leaves the boiler alone.
    now = site.clock.time()
    follower.set_schedule(Schedule("s2", (ScheduleEntry("battery_1/SetActivePower", now, now + 60, 0.0),)))
    site.step()
    site.step()
    assert site.value(LIMIT) is None and site.value("pv_1/ActivePower") > 1000
    assert site.value(BOILER) == 2500.0 and site.value("boiler_1/ActivePower") == 2500.0


def test_the_flexible_load_runs_its_job_inside_its_window() -> None:
    clock = ManualClock(NOON_UTC - 600)  # 11:50 UTC, ten minutes before the window
    store = ChannelStore(clock)
    load = SimFlexibleLoad("boiler_1", FlexibleLoadParams(4000, 1000, 12, 13), ZoneInfo("UTC"))
    load.declare(store)

    def cycle(seconds: float, setpoint: float | None = None) -> None:
        clock.advance(seconds)
        load.read(store, clock.time())
        if setpoint is None:
            store.clear("boiler_1/SetActivePower")
        else:
            store.set("boiler_1/SetActivePower", setpoint, ts=clock.time())
        load.write(store)

    cycle(0)
    assert (load.energy_needed_wh, load.power_w) == (0.0, 0.0)  # before its window: nothing to do
    cycle(600)  # 12:00: the job opens; unmanaged, full power
    assert (load.energy_needed_wh, load.power_w) == (1000.0, 4000.0)
    cycle(450, setpoint=0.0)  # 7.5 min at 4 kW = 500 Wh; then paused
    assert load.energy_needed_wh == pytest.approx(500.0) and load.power_w == 0.0
    cycle(900, setpoint=1000.0)  # paused for 15 min, then 1 kW
    assert load.energy_needed_wh == pytest.approx(500.0) and load.power_w == 1000.0
    cycle(900, setpoint=0.0)  # 250 Wh at 1 kW, then paused again
    assert load.energy_needed_wh == pytest.approx(250.0) and load.power_w == 0.0
    cycle(3600)  # past 13:00: the window closed with 250 Wh undone (logged), the job ends
    assert (load.energy_needed_wh, load.power_w) == (0.0, 0.0)


def test_a_flexible_load_needs_a_window_of_some_time(tmp_path: Path) -> None:
    doc = demo_site_dict()
    doc["devices"].append(
        {"id": "boiler_1", "type": "sim_flexible_load", "max_power_w": 1, "energy_wh": 1, "window_start_hour": 3,
         "window_end_hour": 3}
    )  # fmt: skip
    with pytest.raises(SiteConfigError, match="window_end_hour"):
        parse_config(doc, tmp_path / "site.toml")
