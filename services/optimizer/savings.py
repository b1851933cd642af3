"""Realised savings (docs/optimizer.md, "What the plans saved"): the measured grid exchange of each
ended slot, priced as the plan in force then priced it, next to what that plan expected and to the
self-consumption controller alone on the same measured consumption and production.

The plan in force at a slot is the newest successful run covering it that was created before the slot
ended (what the relay had sent). The baseline replays the edge's self-consumption rule slot by slot on
the site's measured net demand without its batteries (grid + battery power, discharging positive:
load + EV - PV as it happened), with the batteries the plan knew and their state of charge at the
first compared slot as planned. A slot is compared only when a plan was in force and every grid meter
and battery of the site measured it; otherwise it counts as missing. Energy bills only: demand
charges, wear and stored value are left out of a realised outcome.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from emma.common.v1 import types_pb2
from emma.optimizer.v1 import optimizer_pb2 as pb

from services.names import SiteName
from services.optimizer import store
from services.optimizer.assemble import carbon_of_sites
from services.optimizer.config import AssemblyConfig
from services.optimizer.inputs import SLOT, SLOT_H
from services.platform.migrations import Conn
from services.registry import edge_inventory, edges_of_site
from services.telemetry import site_channel_means

K = 1000.0
ACTIVE_POWER = "ActivePower"  # grid meter: positive importing; battery: positive discharging


@dataclass
class Tally:
    """Sums over compared slots: EUR, kg CO2, Wh imported and exported."""

    eur: float = 0.0
    co2_kg: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0

    def add(self, grid_w: float, import_eur_per_kwh: float, feed_in_eur_per_kwh: float, kg_per_kwh: float) -> None:
        imp, exp = max(grid_w, 0.0) / K, max(-grid_w, 0.0) / K  # kW
        self.eur += SLOT_H * (import_eur_per_kwh * imp - feed_in_eur_per_kwh * exp)
        self.co2_kg += SLOT_H * kg_per_kwh * imp
        self.import_wh += SLOT_H * imp * K
        self.export_wh += SLOT_H * exp * K

    def message(self) -> pb.Outcome:
        return pb.Outcome(
            cost_eur=self.eur,
            grid_cost_eur=self.eur,
            co2_kg=self.co2_kg,
            import_wh=self.import_wh,
            export_wh=self.export_wh,
        )


@dataclass
class SlotResult:
    """One compared slot of one site: grid power (W, importing positive) measured, planned, baseline,
    and the prices it is valued at."""

    realised_w: float
    planned_w: float
    baseline_w: float
    import_eur_per_kwh: float
    feed_in_eur_per_kwh: float
    kg_per_kwh: float


@dataclass
class SiteComparison:
    site: str
    slots: dict[dt.datetime, SlotResult] = field(default_factory=dict)
    missing: int = 0
    runs: set[str] = field(default_factory=set)


def _prices(inputs: pb.OptimizationInputs, i: int, fallback_g_per_kwh: float) -> tuple[float, float, float]:
    pr = inputs.prices
    market = pr.market_price_eur_per_mwh[i] / K
    imp = (market + pr.network_tariff_eur_per_mwh / K + pr.tax_eur_per_mwh / K) * (1.0 + pr.vat_rate)
    # The plan's own intensity, as it valued its emissions; a plan made without one (before carbon was
    # configured) is valued at the configured average of the site's zone or country.
    g = pr.carbon_intensity_g_per_kwh[i] if len(pr.carbon_intensity_g_per_kwh) > i else fallback_g_per_kwh
    return imp, pr.feed_in_price_eur_per_mwh[i] / K, g / K


def _in_force(runs: list[store.StoredRun], slot: dt.datetime) -> tuple[store.StoredRun, int] | None:
    """The newest run covering `slot` created before it ended, and the slot's index in it."""
    for run in reversed(runs):  # oldest first in the list
        start = run.inputs.start_time.ToDatetime(dt.UTC)
        index, rest = divmod(slot - start, SLOT)
        created = run.result.create_time.ToDatetime(dt.UTC)
        if not rest and 0 <= index < run.inputs.slot_count and created < slot + SLOT:
            return run, int(index)
    return None


class _Battery:
    """The self-consumption rule of baseline.py, one slot at a time."""

    def __init__(self, b: pb.BatteryInputs, soc_wh: float) -> None:
        self.b = b
        self.soc_kwh = soc_wh / K
        self.top = (b.max_soc_wh if b.HasField("max_soc_wh") else b.capacity_wh) / K
        self.floor = min(max(b.min_soc_wh, b.reserve_wh) / K, self.soc_kwh)
        self.eta_c = b.charge_efficiency or 0.95
        self.eta_d = b.discharge_efficiency or 0.95

    def absorb(self, net_kw: float) -> float:
        """The site's net demand after this battery (kW, positive importing)."""
        if net_kw < 0:
            kw = min(-net_kw, self.b.max_charge_w / K, max(0.0, self.top - self.soc_kwh) / (self.eta_c * SLOT_H))
            self.soc_kwh += kw * self.eta_c * SLOT_H
            return net_kw + kw
        if net_kw > 0:
            kw = min(net_kw, self.b.max_discharge_w / K, max(0.0, self.soc_kwh - self.floor) * self.eta_d / SLOT_H)
            self.soc_kwh -= kw / self.eta_d * SLOT_H
            return net_kw - kw
        return 0.0


def _planned_soc(run: store.StoredRun, device: str, index: int) -> float | None:
    """A battery's planned state of charge at the start of slot `index` of `run`, Wh."""
    if index == 0:
        for b in run.inputs.batteries:
            if b.device == device:
                return b.soc_wh
        return None
    for s in run.result.schedules:
        if s.asset == device and s.kind == pb.ASSET_KIND_BATTERY:
            return s.soc_wh[index - 1]
    return None


async def compare_site(
    conn: Conn, site: SiteName, start: dt.datetime, end: dt.datetime, fallback_g_per_kwh: float = 0.0
) -> SiteComparison:
    """Every slot of [start, end) (ended slots only: the caller cuts `end`) of one site; emissions at the
    plan's carbon intensity, or `fallback_g_per_kwh` where the plan has none."""
    out = SiteComparison(str(site))
    if end <= start:
        return out
    meters: list[str] = []
    batteries: list[str] = []
    names: dict[str, str] = {}  # "edge|device/ActivePower" -> the device's resource name
    for pk, edge in (await edges_of_site(conn, site)).items():
        for device in await edge_inventory(conn, pk):
            channel = f"{device.device_id}/{ACTIVE_POWER}"
            if device.kind == types_pb2.DEVICE_KIND_GRID_METER:
                meters.append(f"{edge}|{channel}")
            elif device.kind == types_pb2.DEVICE_KIND_BATTERY:
                batteries.append(f"{edge}|{channel}")
                names[f"{edge}|{channel}"] = f"{edge}/devices/{device.device_id}"
    means: dict[str, dict[dt.datetime, float]] = {}
    wanted = sorted({key.split("|", 1)[1] for key in meters + batteries})
    for m in await site_channel_means(conn, site, wanted, start, end):
        means[f"{m.edge}|{m.channel}"] = {t.astimezone(dt.UTC): v for t, v in m.means}
    runs = await store.runs_in_force(conn, str(site), start, end)
    fleet: dict[str, _Battery] = {}
    slot = start
    while slot < end:
        found = _in_force(runs, slot)
        grid = [means.get(k, {}).get(slot) for k in meters]
        bats = [means.get(k, {}).get(slot) for k in batteries]
        if found is None or not meters or any(v is None for v in grid) or any(v is None for v in bats):
            out.missing += 1
            slot += SLOT
            continue
        run, i = found
        out.runs.add(run.result.name)
        realised_w = sum(v for v in grid if v is not None)
        # What the site drew without its batteries: grid + what they gave (discharging positive).
        net_kw = (realised_w + sum(v for v in bats if v is not None)) / K
        for b in run.inputs.batteries:
            if b.device not in fleet:
                soc = _planned_soc(run, b.device, i)
                fleet[b.device] = _Battery(b, b.soc_wh if soc is None else soc)
            net_kw = fleet[b.device].absorb(net_kw)
        planned_w = 0.0
        for s in run.result.schedules:
            if s.kind == pb.ASSET_KIND_GRID and s.asset == str(site):
                planned_w = s.power_w[i]
        out.slots[slot] = SlotResult(realised_w, planned_w, net_kw * K, *_prices(run.inputs, i, fallback_g_per_kwh))
        slot += SLOT
    return out


def summarise(
    site: str, slots: dict[dt.datetime, SlotResult], missing: int, only: set[dt.datetime] | None = None
) -> pb.SiteSavings:
    realised, planned, baseline = Tally(), Tally(), Tally()
    n = 0
    for t, r in slots.items():
        if only is not None and t not in only:
            continue
        n += 1
        realised.add(r.realised_w, r.import_eur_per_kwh, r.feed_in_eur_per_kwh, r.kg_per_kwh)
        planned.add(r.planned_w, r.import_eur_per_kwh, r.feed_in_eur_per_kwh, r.kg_per_kwh)
        baseline.add(r.baseline_w, r.import_eur_per_kwh, r.feed_in_eur_per_kwh, r.kg_per_kwh)
    eur, co2 = baseline.eur - realised.eur, baseline.co2_kg - realised.co2_kg
    per_day = 96.0 / n if n else 0.0
    return pb.SiteSavings(
        site=site,
        slot_count=n,
        missing_slot_count=missing,
        realised=realised.message(),
        planned=planned.message(),
        baseline=baseline.message(),
        savings_eur=eur,
        savings_co2_kg=co2,
        savings_eur_per_day=eur * per_day,
        savings_co2_kg_per_day=co2 * per_day,
    )


async def realised_savings(
    conn: Conn,
    sites: list[SiteName],
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    config: AssemblyConfig | None = None,
) -> pb.RealisedSavings:
    """The comparison of each site and of all together over the ended slots of [start, end)."""
    out = pb.RealisedSavings()
    out.start_time.FromDatetime(start)
    out.end_time.FromDatetime(end)
    ended = min(end, now - (now - start) % SLOT) if now > start else start
    compared = []
    for s in sites:
        fallback = 0.0
        if config is not None:
            zone, country = await carbon_of_sites(conn, [s], config)
            fallback = config.carbon.intensity(zone, country) or 0.0
        compared.append(await compare_site(conn, s, start, ended, fallback))
    for c in compared:
        out.sites.append(summarise(c.site, c.slots, c.missing))
    common = set.intersection(*(set(c.slots) for c in compared)) if compared else set()
    total = int((ended - start) / SLOT) if ended > start else 0
    # Sites may be in force under different runs (different prices): the total adds each site's own
    # valuation, so it is the sum of the sites' tallies over the common slots.
    out.total.CopyFrom(_total(compared, common, total))
    out.runs.extend(sorted({r for c in compared for r in c.runs}))
    return out


def _total(compared: list[SiteComparison], common: set[dt.datetime], total_slots: int) -> pb.SiteSavings:
    parts = [summarise(c.site, c.slots, 0, common) for c in compared]
    out = pb.SiteSavings(slot_count=len(common), missing_slot_count=total_slots - len(common))
    for field_name in ("realised", "planned", "baseline"):
        target: pb.Outcome = getattr(out, field_name)
        for p in parts:
            src: pb.Outcome = getattr(p, field_name)
            target.cost_eur += src.cost_eur
            target.grid_cost_eur += src.grid_cost_eur
            target.co2_kg += src.co2_kg
            target.import_wh += src.import_wh
            target.export_wh += src.export_wh
    out.savings_eur = sum(p.savings_eur for p in parts)
    out.savings_co2_kg = sum(p.savings_co2_kg for p in parts)
    per_day = 96.0 / len(common) if common else 0.0
    out.savings_eur_per_day = out.savings_eur * per_day
    out.savings_co2_kg_per_day = out.savings_co2_kg * per_day
    return out
