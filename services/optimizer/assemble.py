"""Inputs from the platform for a run that names only its sites (docs/optimizer.md, "Inputs from the
platform"): the devices and their limits from the edges' inventory (registry), the measured state of
charge and EV sessions (telemetry), the zone's day-ahead prices (market) and the sites' load and PV
forecasts (forecast), with the price parts the market does not publish from configuration.

Whatever is missing is listed, one plain sentence each; the servicer answers FAILED_PRECONDITION with
the list. Nothing missing is ever filled with a zero: a load of 0 W or a price of 0 EUR/MWh would be
planned as if it were true.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import grpc
from emma.common.v1 import errors_pb2, types_pb2
from emma.edge.v1 import edge_link_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb

from services.errors import ApiError
from services.forecast import latest_forecast_values
from services.market import zone_eic, zone_prices
from services.names import EdgeName, SiteName
from services.optimizer.config import MARKET, AssemblyConfig, per_country
from services.optimizer.inputs import SLOT
from services.platform.migrations import Conn
from services.registry import SiteProfile, channel_spec, edge_inventory, edges_of_site, site_profile
from services.telemetry import latest_value

# The channels the edge drivers declare (edge_daemon/devices/*.py and the SunSpec/CAN drivers).
STORED_ENERGY = "StoredEnergy"  # battery: Wh, its maximum is the capacity
SETPOINT = "SetActivePower"  # battery: W, discharging positive; EV charger: W
ACTIVE_POWER = "ActivePower"  # PV: W, its maximum is the peak power
PLUGGED = "Plugged"  # EV charger: 1 with a car
ENERGY_NEEDED = "EnergyNeeded"  # EV charger: Wh the session still needs
SOC = "Soc"  # battery: %, its static limits are the usable window


@dataclass
class Assembled:
    """The inputs of a run and what the platform could not give; `inputs` is usable only when
    `missing` is empty."""

    inputs: pb.OptimizationInputs
    missing: list[str] = field(default_factory=list)
    zone: str = ""  # the short or EIC code the prices were read for


def quarter_hour(now: dt.datetime) -> dt.datetime:
    """The start of the 15-minute slot `now` is in: an assembled plan starts there, from the state
    measured now."""
    return now - dt.timedelta(minutes=now.minute % 15, seconds=now.second, microseconds=now.microsecond)


def _slot_in_progress_filled(values: list[float | None]) -> list[float | None]:
    """The slot in progress (the run's first) from the next slot's value when no forecast covers it.

    A forecast starts at the quarter hour after it was issued, so only one issued before the current
    slot began covers it: a site's first forecasts (a fresh `emma up`, a new site) leave it empty, and
    every run asked for before the next quarter hour was refused for that one slot. The slot is partly
    over and its plan is replaced as soon as a newer run exists (the receding horizon); the next
    slot's forecast is the best estimate there is. Any other gap is still refused."""
    if len(values) > 1 and values[0] is None and values[1] is not None:
        return [values[1], *values[1:]]
    return values


def missing_inputs(missing: list[str]) -> ApiError:
    """FAILED_PRECONDITION naming everything the platform lacks for a run (never a plan with zeros)."""
    joined = "; ".join(missing)
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_STATE_CONFLICT,
        f"the platform cannot give this run its inputs; missing: {joined}",
        metadata={"missing": joined[:1000]},
    )


@dataclass
class _Pv:
    device: str
    peak_w: float


def _spec(device: edge_link_pb2.DeviceInventoryItem, name: str) -> types_pb2.ChannelSpec | None:
    for c in device.channels:
        if c.name == name:
            return c
    return None


def _fmt_slots(start: dt.datetime, missing: list[int]) -> str:
    first = (start + SLOT * missing[0]).strftime("%Y-%m-%d %H:%M")
    return f"{len(missing)} slot{'s' if len(missing) != 1 else ''} from {first} UTC"


def _ev_departure(now: dt.datetime, tz: str, at: dt.time) -> dt.datetime:
    """The next local `at` after `now` (a car plugged in now leaves then), in UTC."""
    local = now.astimezone(ZoneInfo(tz))
    candidate = dt.datetime.combine(local.date(), at, tzinfo=local.tzinfo)
    if candidate <= local:
        candidate = dt.datetime.combine(local.date() + dt.timedelta(days=1), at, tzinfo=local.tzinfo)
    return candidate.astimezone(dt.UTC)


async def _devices(
    conn: Conn,
    site: SiteName,
    tz: str,
    out: Assembled,
    pvs: list[_Pv],
    *,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    config: AssemblyConfig,
) -> bool:
    """The site's batteries and EV sessions into `out.inputs`, its PV inverters into `pvs`; False when
    the site has no edge (nothing reported, so nothing to plan)."""
    edges: dict[int, EdgeName] = await edges_of_site(conn, site)
    if not edges:
        out.missing.append(f"{site}: no edge, so no devices to plan")
        return False
    for pk, edge in edges.items():
        for device in await edge_inventory(conn, pk):
            name = f"{edge}/devices/{device.device_id}"
            if device.kind == types_pb2.DEVICE_KIND_BATTERY:
                await _battery(conn, pk, device, name, out, now, config)
            elif device.kind == types_pb2.DEVICE_KIND_PV_INVERTER:
                power = _spec(device, ACTIVE_POWER)
                if power is None or not power.HasField("max_value") or power.max_value <= 0:
                    out.missing.append(f"PV {name}: no {ACTIVE_POWER} channel with a maximum (its peak power)")
                else:
                    pvs.append(_Pv(name, power.max_value))
            elif device.kind == types_pb2.DEVICE_KIND_EV_CHARGER:
                await _ev(conn, pk, device, name, tz, out, start=start, end=end, now=now, config=config)
    return True


async def _battery(
    conn: Conn,
    pk: int,
    device: edge_link_pb2.DeviceInventoryItem,
    name: str,
    out: Assembled,
    now: dt.datetime,
    config: AssemblyConfig,
) -> None:
    stored, setpoint = _spec(device, STORED_ENERGY), _spec(device, SETPOINT)
    if stored is None or not stored.HasField("max_value") or stored.max_value <= 0:
        out.missing.append(f"battery {name}: no {STORED_ENERGY} channel with a maximum (its capacity)")
        return
    if setpoint is None or not (setpoint.HasField("min_value") and setpoint.HasField("max_value")):
        out.missing.append(f"battery {name}: no {SETPOINT} channel with limits (its charge/discharge power)")
        return
    soc = await latest_value(conn, pk, f"{device.device_id}/{STORED_ENERGY}")
    if soc is None:
        out.missing.append(f"battery {name}: no measured {STORED_ENERGY} (its state of charge)")
        return
    age = (now - soc[0]).total_seconds()
    if age > config.soc_max_age_s:
        out.missing.append(
            f"battery {name}: its state of charge was last measured {soc[0].isoformat()}, "
            f"more than {config.soc_max_age_s:.0f} s ago"
        )
        return
    capacity = stored.max_value
    soc_wh = min(max(soc[1], 0.0), capacity)
    battery = pb.BatteryInputs(
        device=name,
        capacity_wh=capacity,
        soc_wh=soc_wh,
        max_charge_w=max(0.0, -setpoint.min_value),
        max_discharge_w=max(0.0, setpoint.max_value),
    )
    low, high = _soc_window(device, await channel_spec(conn, pk, device.device_id, SOC))
    if low > 0.0:
        # A battery measured below its window may stay there (the model lets it not fall further).
        battery.min_soc_wh = capacity * low / 100.0
    if high < 100.0:
        # Nor is one measured above it asked to be back inside by the end of the first slot.
        battery.max_soc_wh = max(capacity * high / 100.0, soc_wh)
    out.inputs.batteries.append(battery)


def _soc_window(
    device: edge_link_pb2.DeviceInventoryItem, profile: types_pb2.ChannelSpec | None
) -> tuple[float, float]:
    """The usable state-of-charge window of a battery, % of its capacity: the static limits of its `Soc`
    channel (unit %) as the edge declares it (the simulator: its BMS's min_soc..max_soc) and as the
    device's registered profile states it, the narrower of both where both say; 0..100 where neither
    does (the BMS then clamps what the plan cannot do, and the receding horizon re-plans from it)."""
    low, high = 0.0, 100.0
    for spec in (_spec(device, SOC), profile):
        if spec is None or spec.unit != "%":
            continue
        if spec.HasField("min_value") and 0.0 <= spec.min_value <= 100.0:
            low = max(low, spec.min_value)
        if spec.HasField("max_value") and 0.0 <= spec.max_value <= 100.0:
            high = min(high, spec.max_value)
    return (low, high) if low < high else (0.0, 100.0)


async def _ev(
    conn: Conn,
    pk: int,
    device: edge_link_pb2.DeviceInventoryItem,
    name: str,
    tz: str,
    out: Assembled,
    *,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    config: AssemblyConfig,
) -> None:
    setpoint = _spec(device, SETPOINT)
    if setpoint is None or not setpoint.HasField("max_value") or setpoint.max_value <= 0:
        out.missing.append(f"EV charger {name}: no {SETPOINT} channel with a maximum (its charging power)")
        return
    plugged = await latest_value(conn, pk, f"{device.device_id}/{PLUGGED}")
    if plugged is None:
        out.missing.append(f"EV charger {name}: no measured {PLUGGED} (whether a car is connected)")
        return
    if plugged[1] < 0.5:
        return  # no car: the charger draws nothing and needs no plan
    needed = await latest_value(conn, pk, f"{device.device_id}/{ENERGY_NEEDED}")
    if needed is None:
        out.missing.append(f"EV charger {name}: a car is connected but no {ENERGY_NEEDED} was measured")
        return
    if needed[1] <= 0:
        return
    departure = min(_ev_departure(now, tz, config.ev_departure), end)
    departure = start + SLOT * max(1, (departure - start) // SLOT)
    # A car that cannot get all it needs by its departure gets all it can: refusing the whole plan
    # would leave it charging on its own, unplanned, which is worse for it and for the site.
    hours = (departure - start) / dt.timedelta(hours=1)
    energy = min(needed[1], setpoint.max_value * hours)
    ev = pb.EvChargerInputs(device=name, energy_wh=energy, max_power_w=setpoint.max_value)
    ev.arrival_time.FromDatetime(start)
    ev.departure_time.FromDatetime(departure)
    out.inputs.ev_chargers.append(ev)


def _fit_cars_to_connection(
    inputs: pb.OptimizationInputs, first_ev: int, load: list[float], import_limit: float, start: dt.datetime
) -> None:
    """A car gets all it can by its departure (see _ev) within the registry's grid connection too: a
    car plugged in shortly before it leaves behind a connection narrower than its charger would
    otherwise make the whole plan infeasible. Counted without PV or the battery's help, and the room
    the load leaves shared evenly among the site's cars, so the target is always reachable."""
    evs = inputs.ev_chargers[first_ev:]
    for ev in evs:
        slots = int((ev.departure_time.ToDatetime(dt.UTC) - start) // SLOT)
        room_wh = sum(max(0.0, import_limit - w) for w in load[:slots]) * (SLOT / dt.timedelta(hours=1))
        ev.energy_wh = min(ev.energy_wh, room_wh / len(evs))


def _complete(values: list[float | None]) -> list[float] | None:
    return None if any(v is None for v in values) else [float(v) for v in values if v is not None]


def _zone_of(profile: SiteProfile, config: AssemblyConfig) -> str | None:
    """The site's bidding zone as the registry states it, else the one its country has
    (EMMA_OPTIMIZER_ZONES and the countries of one zone); None when neither says."""
    return profile.bidding_zone or config.prices.zones.get(profile.country_code)


async def price_slots(conn: Conn, sites: list[SiteName], start: dt.datetime, slots: int, config: AssemblyConfig) -> int:
    """How many of `slots` quarter hours from `start` the sites' zone has day-ahead prices for, without a
    gap (a receding horizon plans as far as the prices reach); `slots` when the zone is not clear (the
    assembly then names why)."""
    zones = set()
    for site in sites:
        profile = await site_profile(conn, site)
        zones.add(None if profile is None else _zone_of(profile, config))
    zone = next(iter(zones)) if len(zones) == 1 else None
    eic = None if zone is None else zone_eic(zone)
    if eic is None:
        return slots
    found = {t for t, _ in await zone_prices(conn, eic, start, start + SLOT * slots)}
    n = 0
    while n < slots and start + SLOT * n in found:
        n += 1
    return n


async def assemble(
    conn: Conn,
    sites: list[SiteName],
    *,
    start: dt.datetime,
    slots: int,
    now: dt.datetime,
    config: AssemblyConfig,
    objective: pb.OptimizationObjective.ValueType = pb.OPTIMIZATION_OBJECTIVE_UNSPECIFIED,
) -> Assembled:
    """The inputs of a run of `sites` over `slots` quarter hours from `start` (on the grid), with the
    list of everything the platform lacks for it. Unknown sites must have been refused before."""
    end = start + SLOT * slots
    out = Assembled(pb.OptimizationInputs(slot_count=slots, objective=objective))
    out.inputs.start_time.FromDatetime(start)
    out.inputs.step.FromTimedelta(SLOT)
    countries: set[str] = set()
    zones: set[str] = set()
    for site in sites:
        profile = await site_profile(conn, site)
        if profile is None:
            out.missing.append(f"{site}: no such site")
            continue
        country = profile.country_code
        if not country:
            out.missing.append(f"{site}: no country_code (its VAT, tariffs and bidding zone depend on it)")
        else:
            countries.add(country)
            zone = _zone_of(profile, config)
            if zone is None:
                out.missing.append(
                    f"{site}: the bidding zone of country {country}"
                    " (it has several; set the site's bidding_zone or EMMA_OPTIMIZER_ZONES)"
                )
            else:
                zones.add(zone)
        pvs: list[_Pv] = []
        first_battery, first_ev = len(out.inputs.batteries), len(out.inputs.ev_chargers)
        if not await _devices(conn, site, profile.time_zone, out, pvs, start=start, end=end, now=now, config=config):
            continue
        kinds = {"site_load"} | ({"pv_power"} if pvs else set())
        forecasts = {
            k: _slot_in_progress_filled(v)
            for k, v in (await latest_forecast_values(conn, site, kinds, start, slots, as_of=now)).items()
        }
        load = _complete(forecasts["site_load"])
        if load is None:
            gaps = [i for i, v in enumerate(forecasts["site_load"]) if v is None]
            out.missing.append(f"{site}: a load forecast (site_load) for {_fmt_slots(start, gaps)}")
            load = [0.0] * slots  # never solved: the run is refused for the missing forecast
        pv_forecast: list[float] = []
        if pvs:
            found = _complete(forecasts["pv_power"])
            if found is None:
                gaps = [i for i, v in enumerate(forecasts["pv_power"]) if v is None]
                out.missing.append(f"{site}: a PV forecast (pv_power) for {_fmt_slots(start, gaps)}")
            else:
                pv_forecast = found
                # The forecast is the site's; each inverter gets its share of the peak power, never
                # more than its peak (the limit the edge would refuse a curtailment above).
                total_peak = sum(p.peak_w for p in pvs)
                for p in pvs:
                    share = p.peak_w / total_peak
                    # Curtailable: the edge follows a planned ActivePowerLimit (dispatch.py) and lifts
                    # it when the slot or the schedule ends.
                    out.inputs.pv_arrays.append(
                        pb.PvInputs(
                            device=p.device,
                            forecast_w=[min(p.peak_w, max(0.0, v) * share) for v in found],
                            curtailable=True,
                        )
                    )
        # The grid connection's limits as the registry states them; where it states none (0), the bound
        # is what the site's own devices and load can draw or feed in, which no plan can exceed anyway
        # (docs/optimizer.md).
        bats = list(out.inputs.batteries)[first_battery:]
        evs = list(out.inputs.ev_chargers)[first_ev:]
        draw = sum(b.max_charge_w for b in bats) + sum(e.max_power_w for e in evs) + max(load, default=0.0)
        feed = sum(b.max_discharge_w for b in bats) + max(pv_forecast, default=0.0)
        import_limit = profile.grid_import_limit_w or math.ceil(draw) + 1.0
        export_limit = profile.grid_export_limit_w or math.ceil(feed) + 1.0
        if profile.grid_import_limit_w and evs:
            _fit_cars_to_connection(out.inputs, first_ev, load, import_limit, start)
        out.inputs.sites.append(
            pb.SiteInputs(site=str(site), load_w=load, import_limit_w=import_limit, export_limit_w=export_limit)
        )
    await _prices(conn, out, countries, zones, start, end, config)
    if len(zones) == 1 and len(countries) == 1:
        zone, country = next(iter(zones)), next(iter(countries))
        if not _carbon(out.inputs, zone, country, config):
            out.missing.append(
                f"the carbon intensity of zone {zone} or country {country} (set EMMA_OPTIMIZER_CARBON_INTENSITY)"
            )
    return out


def _carbon(inputs: pb.OptimizationInputs, zone: str | None, country: str | None, config: AssemblyConfig) -> bool:
    """The configured average carbon intensity of the zone (else the country) on every slot, and for
    COST_AND_CARBON the configured carbon price, so the plan's expected emissions and the realised ones
    are valued alike (docs/optimizer.md, "Carbon"). The platform has no per-slot intensity source yet.
    False only when the objective needs an intensity and none is configured; a COST run without one
    reports no emissions rather than being refused."""
    needed = inputs.objective == pb.OPTIMIZATION_OBJECTIVE_COST_AND_CARBON
    value = config.carbon.intensity(zone, country)
    if value is None:
        return not needed
    inputs.prices.carbon_intensity_g_per_kwh.extend([value] * inputs.slot_count)
    # A carbon price the inputs state (explicit inputs) stays; none (0) takes the configured one, or
    # COST_AND_CARBON would be COST under another name.
    if needed and inputs.prices.carbon_cost_eur_per_tonne == 0:
        inputs.prices.carbon_cost_eur_per_tonne = config.carbon.price_eur_per_tonne
    return True


async def carbon_of_sites(conn: Conn, sites: list[SiteName], config: AssemblyConfig) -> tuple[str | None, str | None]:
    """The one bidding zone and country the sites share (None for either where they differ or the
    registry does not say): what a configured carbon intensity is looked up by."""
    zones: set[str | None] = set()
    countries: set[str | None] = set()
    for site in sites:
        profile = await site_profile(conn, site)
        countries.add(None if profile is None else profile.country_code or None)
        zones.add(None if profile is None else _zone_of(profile, config))
    zone = next(iter(zones)) if len(zones) == 1 else None
    country = next(iter(countries)) if len(countries) == 1 else None
    return zone, country


async def fill_carbon(
    conn: Conn, inputs: pb.OptimizationInputs, sites: list[SiteName], config: AssemblyConfig
) -> str | None:
    """Explicit inputs without a carbon intensity get the configured average of their sites' zone or
    country (the same as an assembled run); None when done or not needed, else why it could not be."""
    if inputs.prices.carbon_intensity_g_per_kwh:
        return None
    zone, country = await carbon_of_sites(conn, sites, config)
    if _carbon(inputs, zone, country, config):
        return None
    return (
        f"no carbon intensity per slot in the inputs and none configured for zone {zone} or country {country}"
        " (set EMMA_OPTIMIZER_CARBON_INTENSITY)"
    )


async def _prices(
    conn: Conn,
    out: Assembled,
    countries: set[str],
    zones: set[str],
    start: dt.datetime,
    end: dt.datetime,
    config: AssemblyConfig,
) -> None:
    inputs = out.inputs
    if len(countries) > 1:
        out.missing.append(f"one country for all sites (their prices, VAT and tariffs differ): {sorted(countries)}")
    if len(zones) > 1:
        out.missing.append(f"one bidding zone for all sites (one price series per run): {sorted(zones)}")
    if len(zones) != 1 or len(countries) != 1:
        return
    zone, country = next(iter(zones)), next(iter(countries))
    out.zone = zone
    prices = config.prices
    tariff, tax, vat = (
        per_country(prices.network_tariff, country),
        per_country(prices.tax, country),
        per_country(prices.vat, country),
    )
    feed_in = per_country(prices.feed_in, country)
    for value, what, variable in (
        (tariff, "network tariff", "EMMA_OPTIMIZER_NETWORK_TARIFFS"),
        (tax, "energy taxes", "EMMA_OPTIMIZER_TAXES"),
        (vat, "VAT rate", "EMMA_OPTIMIZER_VAT"),
        (feed_in, "feed-in price", "EMMA_OPTIMIZER_FEED_IN"),
    ):
        if value is None:
            out.missing.append(f"the {what} of country {country} (set {variable})")
    eic = zone_eic(zone)
    if eic is None:
        out.missing.append(f"prices of zone {zone!r}: not a bidding zone the market domain knows")
        return
    found = dict(await zone_prices(conn, eic, start, end))
    market: list[float] = []
    gaps: list[int] = []
    for i in range(inputs.slot_count):
        value = found.get(start + SLOT * i)
        if value is None:
            gaps.append(i)
        else:
            market.append(value)
    if gaps:
        out.missing.append(
            f"day-ahead prices of {zone} for {_fmt_slots(start, gaps)} (not published or not fetched yet)"
        )
        return
    if tariff is None or tax is None or vat is None or feed_in is None:
        return
    assert isinstance(tariff, float) and isinstance(tax, float) and isinstance(vat, float)
    inputs.prices.market_price_eur_per_mwh.extend(market)
    inputs.prices.feed_in_price_eur_per_mwh.extend(market if feed_in == MARKET else [float(feed_in)] * len(market))
    inputs.prices.network_tariff_eur_per_mwh = tariff
    inputs.prices.tax_eur_per_mwh = tax
    inputs.prices.vat_rate = vat
