// The site's power balance from its channels, by the device naming convention of docs/forecasting.md
// ("Measured history"): `<device>/ActivePower` of devices pv*, battery*, grid* (or meter*), load*, ev*.
// Signs: PV > 0 producing, battery > 0 discharging, grid > 0 importing, load and EV > 0 consuming.
// Without a load device the load is derived from the bus balance: grid + PV + battery - EV.
import type { LatestValue } from "./api";

export type Role = "pv" | "battery" | "grid" | "load" | "ev" | "other";

export interface ChannelRef {
  edge: string;
  device: string;
  channel: string;
}

const CHANNEL = /^organizations\/[^/]+\/sites\/[^/]+\/edges\/([^/]+)\/devices\/([^/]+)\/channels\/(.+)$/;

export function parseChannel(name: string | undefined): ChannelRef | undefined {
  const m = (name ?? "").match(CHANNEL);
  return m ? { edge: m[1]!, device: m[2]!, channel: m[3]! } : undefined;
}

export function roleOf(device: string): Role {
  const d = device.toLowerCase();
  if (/^pv([_-]|$)|^solar/.test(d)) return "pv";
  if (/^batt(ery)?([_-]|$)|^bms/.test(d)) return "battery";
  if (/^(grid|meter)([_-]|$)/.test(d)) return "grid";
  if (/^load([_-]|$)/.test(d)) return "load";
  if (/^ev([_-]|$)|charger/.test(d)) return "ev";
  return "other";
}

const POWER_CHANNELS = new Set(["ActivePower", "GridPower"]);

export function isPowerChannel(ref: ChannelRef, unit: string | undefined): boolean {
  return POWER_CHANNELS.has(ref.channel) && (unit ?? "W") === "W";
}

export interface Flow {
  pvW?: number | undefined;
  batteryW?: number | undefined;
  gridW?: number | undefined;
  loadW?: number | undefined;
  evW?: number | undefined;
  socPct?: number | undefined;
  loadDerived: boolean;
}

export function flowOf(values: Iterable<LatestValue>): Flow {
  const sums: Partial<Record<Role, number>> = {};
  const socs: number[] = [];
  for (const v of values) {
    const ref = parseChannel(v.channel);
    if (!ref || v.value === undefined) continue;
    const role = roleOf(ref.device);
    if (role === "battery" && ref.channel === "Soc") socs.push(v.value);
    if (!isPowerChannel(ref, v.unit) || role === "other") continue;
    sums[role] = (sums[role] ?? 0) + v.value;
  }
  let loadW = sums.load;
  let loadDerived = false;
  // Derived only next to PV or a battery: a site that meters just its grid connection knows nothing of
  // what its home uses beyond that (an export would read as a negative load).
  if (loadW === undefined && sums.grid !== undefined && (sums.pv !== undefined || sums.battery !== undefined)) {
    loadW = sums.grid + (sums.pv ?? 0) + (sums.battery ?? 0) - (sums.ev ?? 0);
    loadDerived = true;
  }
  return {
    pvW: sums.pv,
    batteryW: sums.battery,
    gridW: sums.grid,
    loadW,
    evW: sums.ev,
    socPct: socs.length ? socs.reduce((a, b) => a + b, 0) / socs.length : undefined,
    loadDerived,
  };
}

export interface Flexibility {
  upW: number; // more power the batteries could feed the site (discharge more or charge less)
  downW: number; // more power they could take (charge more or discharge less)
  batteries: number;
}

/** The batteries' headroom from their dynamic limits (MaxDischargePower, MaxChargePower, both W > 0)
 * and their power now (> 0 discharging): what a VPP could ask of them this minute. */
export function flexibilityOf(values: Iterable<LatestValue>): Flexibility {
  const byDevice = new Map<string, { p?: number; maxDis?: number; maxCh?: number }>();
  for (const v of values) {
    const ref = parseChannel(v.channel);
    if (!ref || v.value === undefined || roleOf(ref.device) !== "battery") continue;
    const key = `${ref.edge}/${ref.device}`;
    const d = byDevice.get(key) ?? {};
    if (ref.channel === "ActivePower") d.p = v.value;
    else if (ref.channel === "MaxDischargePower") d.maxDis = v.value;
    else if (ref.channel === "MaxChargePower") d.maxCh = v.value;
    byDevice.set(key, d);
  }
  let upW = 0;
  let downW = 0;
  let batteries = 0;
  for (const d of byDevice.values()) {
    if (d.maxDis === undefined || d.maxCh === undefined) continue;
    const p = d.p ?? 0;
    upW += Math.max(0, d.maxDis - p);
    downW += Math.max(0, d.maxCh + p);
    batteries += 1;
  }
  return { upW, downW, batteries };
}
