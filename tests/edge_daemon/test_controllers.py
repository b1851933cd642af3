"""Controllers on a simulated site: manual override, self-consumption, peak shaving, schedule follower."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_daemon.channels import Ack, AckReason, AckStatus, Category, ChannelValue, request_channel
from edge_daemon.commands import submit_command
from edge_daemon.controllers.base import Controller
from edge_daemon.controllers.manual_override import ManualOverride, ManualOverrideParams
from edge_daemon.controllers.peak_shaving import PeakShaving, PeakShavingParams
from edge_daemon.controllers.schedule_follower import (
    SAFE_MODE_CHANNEL,
    SafeMode,
    Schedule,
    ScheduleEntry,
    ScheduleFollower,
    ScheduleFollowerParams,
)
from edge_daemon.controllers.self_consumption import SelfConsumption, SelfConsumptionParams
from edge_daemon.devices.ev_charger import SimEvCharger
from edge_daemon.errors import CommandError, LimitError, NotWritableError, ScheduleError
from tests.support.sim import MIDSUMMER, Site, site_config

SETPOINT = "battery_1/SetActivePower"
NOON = MIDSUMMER + 11 * 3600  # 13:00 in Berlin


def _site(tmp_path: Path, controllers: list[Controller], start: float = MIDSUMMER, ev: bool = False) -> Site:
    site = Site(site_config(tmp_path, quiet=True), controllers=controllers, start=start)
    if not ev:
        charger = site.device("ev_1")
        assert isinstance(charger, SimEvCharger)
        charger.params = type(charger.params)(daily_sessions=False)
    return site


def _self_consumption() -> SelfConsumption:
    return SelfConsumption(SelfConsumptionParams("battery_1", "grid_1"))


def _acks(site: Site) -> list[Ack]:
    return [e.ack for e in site.store.drain_acks()]


# -- manual override -----------------------------------------------------------------------------


def test_manual_command_reaches_the_device_and_acks_the_applied_value(tmp_path: Path) -> None:
    site = _site(tmp_path, [_self_consumption(), ManualOverride(ManualOverrideParams(default_hold_s=60))])
    site.run(3)
    assert submit_command(site.store, site.devices, SETPOINT, "cmd-1", -2_000.0) is None
    site.step()
    assert _acks(site) == [Ack("cmd-1", AckStatus.EXECUTED, "", -2_000.0)]
    assert site.value(request_channel(SETPOINT)) is None  # request cleared
    site.step()
    # Held against self-consumption (which would discharge at night) for the hold time...
    for _ in range(30):
        assert site.value("battery_1/ActivePower") == -2_000.0
        site.step()
    site.run(40)
    # ...and released afterwards: self-consumption discharges to cover the load again.
    assert site.value("battery_1/ActivePower") > 0
    assert abs(site.value("grid_1/ActivePower") - site.value("ev_1/ActivePower")) < 1.0


def test_out_of_limit_command_is_rejected_with_a_reason(tmp_path: Path) -> None:
    site = _site(tmp_path, [ManualOverride()])
    site.step()
    submit_command(site.store, site.devices, SETPOINT, "too-much", 6_000.0)
    site.step()
    [ack] = _acks(site)
    assert ack.status is AckStatus.REJECTED
    assert ack.command_id == "too-much"
    assert "6000" in ack.reason and "outside limits" in ack.reason
    assert ack.code is AckReason.VALUE_OUT_OF_RANGE  # beyond the battery's 5 kW rating
    assert site.value(SETPOINT) is None  # nothing was written
    assert site.value(request_channel(SETPOINT)) is None


def test_command_is_checked_against_dynamic_limits(tmp_path: Path) -> None:
    site = _site(tmp_path, [ManualOverride()])
    site.step()
    # Nearly full: the BMS's MaxChargePower has tapered far below the 5 kW rating.
    battery = site.device("battery_1")
    battery.energy_wh = 9_499.0  # type: ignore[attr-defined]
    site.step()
    max_charge = site.value("battery_1/MaxChargePower")
    assert 0 < max_charge < 1_000
    submit_command(site.store, site.devices, SETPOINT, "charge", -3_000.0)
    submit_command(site.store, site.devices, "ev_1/SetActivePower", "ev", 5_000.0)  # not plugged in
    site.step()
    acks = {a.command_id: a for a in _acks(site)}
    assert acks["charge"].status is AckStatus.REJECTED
    assert f"{-max_charge:g}" in acks["charge"].reason
    assert acks["ev"].status is AckStatus.REJECTED and "0..0" in acks["ev"].reason
    assert acks["charge"].code is acks["ev"].code is AckReason.VALUE_EXCEEDS_DYNAMIC_LIMIT


def test_duplicate_command_id_is_applied_once(tmp_path: Path) -> None:
    site = _site(tmp_path, [ManualOverride()])
    site.step()
    submit_command(site.store, site.devices, SETPOINT, "c1", 1_000.0)
    site.step()
    submit_command(site.store, site.devices, SETPOINT, "c2", 2_000.0)
    site.step()
    first = _acks(site)
    assert [(a.command_id, a.applied_value) for a in first] == [("c1", 1_000.0), ("c2", 2_000.0)]
    # The cloud redelivers c1 (it missed the ack): the edge repeats the ack but does not re-apply it.
    submit_command(site.store, site.devices, SETPOINT, "c1", 1_000.0)
    site.step()
    assert _acks(site) == [first[0]]
    site.step()
    assert site.value(SETPOINT) == 2_000.0
    assert site.value("battery_1/ActivePower") == 2_000.0


def test_a_second_command_before_the_cycle_supersedes_the_first(tmp_path: Path) -> None:
    site = _site(tmp_path, [ManualOverride()])
    site.step()
    submit_command(site.store, site.devices, SETPOINT, "old", 1_000.0)
    displaced = submit_command(site.store, site.devices, SETPOINT, "new", 500.0)
    assert displaced is not None and displaced.command_id == "old"
    site.step()
    acks = _acks(site)
    assert [(a.command_id, a.status) for a in acks] == [
        ("old", AckStatus.REJECTED),
        ("new", AckStatus.EXECUTED),
    ]
    assert "superseded" in acks[0].reason and acks[0].code is AckReason.SUPERSEDED
    assert acks[1].code is None
    assert site.value(SETPOINT) == 500.0


def test_release_hands_control_back(tmp_path: Path) -> None:
    site = _site(tmp_path, [_self_consumption(), ManualOverride()])
    site.step()
    submit_command(site.store, site.devices, SETPOINT, "hold", 0.0)
    site.run(3)
    assert site.value(SETPOINT) == 0.0
    submit_command(site.store, site.devices, SETPOINT, "release", None)
    site.run(2)
    assert site.value(SETPOINT) > 0  # self-consumption covers the night load again
    assert [a.status for a in _acks(site)] == [AckStatus.EXECUTED, AckStatus.EXECUTED]


def test_commands_for_unknown_or_read_only_channels_fail_at_submission(tmp_path: Path) -> None:
    site = _site(tmp_path, [ManualOverride()])
    with pytest.raises(CommandError, match="unknown channel"):
        submit_command(site.store, site.devices, "battery_9/SetActivePower", "x", 1.0)
    with pytest.raises(CommandError, match="not writable"):
        submit_command(site.store, site.devices, "battery_1/Soc", "x", 1.0)
    with pytest.raises(CommandError, match="finite"):
        submit_command(site.store, site.devices, SETPOINT, "x", float("nan"))


def test_one_writable_check_serves_commands_controllers_and_limits(tmp_path: Path) -> None:
    site = _site(tmp_path, [])
    assert site.devices.writable(SETPOINT)[1].name == "SetActivePower"
    for channel, known in (("battery_9/SetActivePower", False), ("battery_1/Soc", True)):
        with pytest.raises(NotWritableError) as info:
            site.devices.writable(channel)
        assert info.value.known is known
        with pytest.raises(NotWritableError):
            site.step().write(channel, 1.0)
        with pytest.raises(LimitError, match=str(info.value)):
            site.devices.limits(channel, {}, 0.0)


def test_stale_dynamic_limits_refuse(tmp_path: Path) -> None:
    site = _site(tmp_path, [])
    ctx = site.step()
    snap = dict(ctx.snapshot)
    old = snap["battery_1/MaxChargePower"]
    snap["battery_1/MaxChargePower"] = ChannelValue(old.value, ctx.now - 31, Category.INPUT)
    with pytest.raises(LimitError, match="stale"):
        site.devices.limits(SETPOINT, snap, ctx.now)
    del snap["battery_1/MaxChargePower"]
    with pytest.raises(LimitError, match="unavailable"):
        site.devices.limits(SETPOINT, snap, ctx.now)


# -- self-consumption and peak shaving -----------------------------------------------------------


def test_self_consumption_drives_grid_to_zero_by_day_and_by_night(tmp_path: Path) -> None:
    morning = MIDSUMMER + 6 * 3600  # 08:00 local: a surplus the battery can absorb
    site = _site(tmp_path, [_self_consumption()], start=morning)
    site.run(3)
    assert site.value("pv_1/ActivePower") > site.value("load_1/ActivePower") + 1_000
    assert site.value("battery_1/ActivePower") < 0  # charging from the surplus
    assert abs(site.value("grid_1/ActivePower")) < 1.0
    night = MIDSUMMER + 20 * 3600  # 22:00 local: discharging to cover the load
    site = _site(tmp_path, [_self_consumption()], start=night)
    site.run(3)
    assert site.value("pv_1/ActivePower") == 0
    assert site.value("battery_1/ActivePower") > 0
    assert abs(site.value("grid_1/ActivePower")) < 1.0


def test_self_consumption_charges_at_the_limit_and_exports_the_rest(tmp_path: Path) -> None:
    site = _site(tmp_path, [_self_consumption()], start=NOON)
    site.run(3)
    surplus = site.value("pv_1/ActivePower") - site.value("load_1/ActivePower")
    assert surplus > 5_000  # more than the 5 kW charge rating
    assert site.value("battery_1/ActivePower") == pytest.approx(-5_000)
    assert site.value("grid_1/ActivePower") == pytest.approx(-(surplus - 5_000), abs=1.0)


def test_self_consumption_stays_within_battery_limits(tmp_path: Path) -> None:
    site = _site(tmp_path, [_self_consumption()], ev=True)  # 02:00 local: the EV draws 11 kW
    site.run(3)
    assert site.value("ev_1/ActivePower") == 11_000
    assert site.value(SETPOINT) == pytest.approx(site.value("battery_1/MaxDischargePower"))
    assert site.value("battery_1/ActivePower") == 5_000
    assert site.value("grid_1/ActivePower") == pytest.approx(
        site.value("load_1/ActivePower") + 11_000 - 5_000 - site.value("pv_1/ActivePower")
    )


def test_peak_shaving_keeps_import_under_threshold(tmp_path: Path) -> None:
    shave = PeakShaving(PeakShavingParams("battery_1", "grid_1", max_import_w=8_000, recharge=False))
    site = _site(tmp_path, [shave], ev=True)
    site.run(3)
    assert site.value("ev_1/ActivePower") == 11_000
    assert site.value("grid_1/ActivePower") == pytest.approx(8_000, abs=1.0)
    assert 0 < site.value("battery_1/ActivePower") < 5_000


def test_peak_shaving_recharges_within_the_headroom(tmp_path: Path) -> None:
    shave = PeakShaving(PeakShavingParams("battery_1", "grid_1", max_import_w=2_000))
    site = _site(tmp_path, [shave])
    site.run(3)
    assert site.value("battery_1/ActivePower") < 0  # charging from the grid...
    assert site.value("grid_1/ActivePower") == pytest.approx(2_000, abs=1.0)  # ...up to the threshold


def test_peak_shaving_refines_a_lower_priority_decision(tmp_path: Path) -> None:
    shave = PeakShaving(PeakShavingParams("battery_1", "grid_1", max_import_w=2_000))
    site = _site(tmp_path, [_self_consumption(), shave])
    site.run(3)
    # Self-consumption below already keeps import at 0 < 2 kW: peak shaving leaves its decision alone.
    assert abs(site.value("grid_1/ActivePower")) < 1.0
    assert site.value("battery_1/ActivePower") > 0


# -- schedule follower ---------------------------------------------------------------------------


def _follower(site_devices: object, mode: SafeMode, **kw: object) -> ScheduleFollower:
    params = ScheduleFollowerParams("battery_1", mode, grid_meter="grid_1", **kw)  # type: ignore[arg-type]
    return ScheduleFollower(params, site_devices)  # type: ignore[arg-type]


def _schedule_site(
    tmp_path: Path, mode: SafeMode, below: list[Controller] | None = None
) -> tuple[Site, ScheduleFollower]:
    site = _site(tmp_path, [])
    follower = _follower(site.devices, mode)
    site.controllers[:] = []
    site.cycle.controllers = (*(below or []), follower)
    return site, follower


def test_schedule_is_followed_then_expires_into_hold(tmp_path: Path) -> None:
    site, follower = _schedule_site(tmp_path, SafeMode.HOLD)
    site.step()
    assert site.value(SETPOINT) == 0.0 and site.value(SAFE_MODE_CHANNEL) is True  # no schedule yet
    now = site.clock.time()
    follower.set_schedule(
        Schedule(
            "s1",
            (
                ScheduleEntry(SETPOINT, now, now + 300, -2_500.0),
                ScheduleEntry(SETPOINT, now + 300, now + 600, 1_500.0),
            ),
        )
    )
    site.step()
    assert site.value(SETPOINT) == -2_500.0 and site.value(SAFE_MODE_CHANNEL) is False
    site.step(300)
    assert site.value(SETPOINT) == 1_500.0
    site.step(300)  # past the last entry
    assert site.value(SETPOINT) == 0.0
    assert site.value(SAFE_MODE_CHANNEL) is True
    site.step()
    assert site.value("battery_1/ActivePower") == 0.0


def test_schedule_expiry_falls_back_to_self_consumption(tmp_path: Path) -> None:
    site, follower = _schedule_site(tmp_path, SafeMode.SELF_CONSUMPTION)
    now = site.clock.time()
    follower.set_schedule(Schedule("s", (ScheduleEntry(SETPOINT, now, now + 60, -3_000.0),)))
    site.run(3)
    assert site.value("battery_1/ActivePower") == -3_000.0
    site.run(70)
    assert site.value("battery_1/ActivePower") > 0
    assert abs(site.value("grid_1/ActivePower")) < 1.0


def test_schedule_defers_to_lower_priority_controllers_when_absent(tmp_path: Path) -> None:
    site, follower = _schedule_site(tmp_path, SafeMode.DEFER, below=[_self_consumption()])
    site.run(3)
    assert abs(site.value("grid_1/ActivePower")) < 1.0  # self-consumption in charge
    now = site.clock.time()
    follower.set_schedule(Schedule("s", (ScheduleEntry(SETPOINT, now, now + 60, -1_000.0),)))
    site.run(3)
    assert site.value("battery_1/ActivePower") == -1_000.0  # the schedule outranks it
    follower.clear_schedule()
    site.run(3)
    assert abs(site.value("grid_1/ActivePower")) < 1.0


def test_schedule_values_are_clamped_to_dynamic_limits(tmp_path: Path) -> None:
    site, follower = _schedule_site(tmp_path, SafeMode.HOLD)
    site.device("battery_1").energy_wh = 1_010.0  # type: ignore[attr-defined]  # just above min SOC
    now = site.clock.time()
    follower.set_schedule(Schedule("s", (ScheduleEntry(SETPOINT, now, now + 60, 5_000.0),)))
    site.run(2)
    assert 0 < site.value(SETPOINT) < 1_000
    assert site.value(SETPOINT) == pytest.approx(site.value("battery_1/MaxDischargePower"))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((ScheduleEntry("battery_9/SetActivePower", 0, 10, 1.0),), "not a writable channel"),
        ((ScheduleEntry("battery_1/Soc", 0, 10, 1.0),), "not a writable channel"),
        ((ScheduleEntry(SETPOINT, 10, 10, 1.0),), "start must be before end"),
        ((ScheduleEntry(SETPOINT, 0, 10, 9_999.0),), "static limits"),
        ((ScheduleEntry(SETPOINT, 0, 10, 1.0), ScheduleEntry(SETPOINT, 5, 20, 1.0)), "overlap"),
    ],
)
def test_bad_schedules_are_refused_and_keep_the_current_one(
    tmp_path: Path, entries: tuple[ScheduleEntry, ...], message: str
) -> None:
    _, follower = _schedule_site(tmp_path, SafeMode.HOLD)
    good = Schedule("good", (ScheduleEntry(SETPOINT, 0, 1e12, 100.0),))
    follower.set_schedule(good)
    with pytest.raises(ScheduleError, match=message):
        follower.set_schedule(Schedule("bad", entries))
    assert follower.schedule is good
