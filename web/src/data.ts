// Reads shared by the pages; each throws an Error with the API's message so useLoad shows it in words.
import { api, describeError, lastSegment, type Edge, type LatestValue, type Organization, type Site } from "./api";

const MAX_PAGES = 20;

async function pages<T>(fetchPage: (token: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const all: T[] = [];
  let token = "";
  for (let i = 0; i < MAX_PAGES; i++) {
    const { items, next } = await fetchPage(token);
    all.push(...items);
    if (!next) break;
    token = next;
  }
  return all;
}

export async function listOrganizations(): Promise<Organization[]> {
  return pages(async (pageToken) => {
    const { data, error, response } = await api.GET("/v1/organizations", {
      params: { query: { pageSize: 1000, pageToken } },
    });
    if (!data) throw new Error(describeError(error, response));
    return { items: data.organizations ?? [], next: data.nextPageToken ?? "" };
  });
}

export async function listSites(org: string): Promise<Site[]> {
  return pages(async (pageToken) => {
    const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites", {
      params: { path: { organization: org }, query: { pageSize: 1000, pageToken } },
    });
    if (!data) throw new Error(describeError(error, response));
    return { items: data.sites ?? [], next: data.nextPageToken ?? "" };
  });
}

export async function getSite(org: string, site: string): Promise<Site> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}", {
    params: { path: { organization: org, site } },
  });
  if (!data) throw new Error(describeError(error, response));
  return data;
}

export async function listEdges(org: string, site: string): Promise<Edge[]> {
  return pages(async (pageToken) => {
    const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}/edges", {
      params: { path: { organization: org, site }, query: { pageSize: 1000, pageToken } },
    });
    if (!data) throw new Error(describeError(error, response));
    return { items: data.edges ?? [], next: data.nextPageToken ?? "" };
  });
}

export async function latestValues(org: string, site: string): Promise<LatestValue[]> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}/latestValues", {
    params: { path: { organization: org, site } },
  });
  if (!data) throw new Error(describeError(error, response));
  return data.values ?? [];
}

export type SiteState = "online" | "partly online" | "offline" | "never connected" | "no edge";

export function siteState(edges: Edge[]): SiteState {
  if (edges.length === 0) return "no edge";
  const online = edges.filter((e) => e.connectionState === "EDGE_CONNECTION_STATE_ONLINE").length;
  if (online === edges.length) return "online";
  if (online > 0) return "partly online";
  if (edges.every((e) => e.connectionState === "EDGE_CONNECTION_STATE_NEVER_CONNECTED")) return "never connected";
  return "offline";
}

/** Grid power now: the grid meter's active power (positive importing), summed over the site's edges.
 * The meter is recognised by its device id (grid/meter) until devices carry a role the UI can read. */
export function gridPowerW(values: LatestValue[]): number | undefined {
  let total: number | undefined;
  for (const v of values) {
    const parts = (v.channel ?? "").split("/");
    const device = parts[parts.length - 3] ?? "";
    const channel = lastSegment(v.channel);
    if (/grid|meter/i.test(device) && (channel === "ActivePower" || channel === "GridPower") && v.unit === "W") {
      total = (total ?? 0) + (v.value ?? 0);
    }
  }
  return total;
}

export type HistorySeries = import("./api").Schemas["emma.telemetry.v1.HistorySeries"];
export type PriceCurve = import("./api").Schemas["emma.market.v1.PriceCurve"];
export type Forecast = import("./api").Schemas["emma.forecast.v1.Forecast"];
export type ActiveSchedule = import("./api").Schemas["emma.optimizer.v1.ActiveSchedule"];

/** History of channels between two times; interval in whole minutes, 0 for raw samples. */
export async function queryHistory(
  org: string,
  site: string,
  channels: string[],
  from: Date,
  to: Date,
  intervalS: number,
): Promise<HistorySeries[]> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}:queryHistory", {
    params: {
      path: { organization: org, site },
      query: {
        channels,
        startTime: from.toISOString(),
        endTime: to.toISOString(),
        ...(intervalS > 0 ? { interval: `${intervalS}s`, aggregation: "AGGREGATION_AVERAGE" as const } : {}),
      },
    },
  });
  if (!data) throw new Error(describeError(error, response));
  return data.series ?? [];
}

export async function priceCurve(zone: string, from: Date, to: Date): Promise<PriceCurve> {
  const { data, error, response } = await api.GET("/v1/market/priceCurve", {
    params: { query: { "series.zone": zone, startTime: from.toISOString(), endTime: to.toISOString() } },
  });
  if (!data) throw new Error(describeError(error, response));
  return data;
}

/** The newest forecast of a kind, or undefined when the site has none yet (404). */
export async function latestForecast(
  org: string,
  site: string,
  kind: "FORECAST_KIND_PV_POWER" | "FORECAST_KIND_SITE_LOAD",
): Promise<Forecast | undefined> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}:latestForecast", {
    params: { path: { organization: org, site }, query: { kind } },
  });
  if (response.status === 404) return undefined;
  if (!data) throw new Error(describeError(error, response));
  return data;
}

/** The optimizer's plan in force at an edge, or undefined when there is none (404). */
export async function activeSchedule(org: string, site: string, edge: string): Promise<ActiveSchedule | undefined> {
  const { data, error, response } = await api.GET(
    "/v1/organizations/{organization}/sites/{site}/edges/{edge}:activeSchedule",
    { params: { path: { organization: org, site, edge } } },
  );
  if (response.status === 404) return undefined;
  if (!data) throw new Error(describeError(error, response));
  return data;
}

export type RealisedSavings = import("./api").Schemas["emma.optimizer.v1.RealisedSavings"];

/** What the plans saved at one site in [from, to) (both on quarter hours), against self-consumption alone. */
export async function realisedSavings(org: string, site: string, from: Date, to: Date): Promise<RealisedSavings> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/optimizationRuns:realisedSavings", {
    params: {
      path: { organization: org },
      query: { sites: [`organizations/${org}/sites/${site}`], startTime: from.toISOString(), endTime: to.toISOString() },
    },
  });
  if (!data) throw new Error(describeError(error, response));
  return data;
}

/** "900s" -> 900. */
export function seconds(duration: string | undefined): number {
  const m = (duration ?? "").match(/^(-?[0-9.]+)s$/);
  return m ? Number(m[1]) : 0;
}

export type Device = import("./api").Schemas["emma.registry.v1.Device"];
export type DeviceProfile = import("./api").Schemas["emma.registry.v1.DeviceProfile"];
export type ChannelSpec = import("./api").Schemas["emma.common.v1.ChannelSpec"];

/** An edge's devices: registered ones (with their profile) and those the edge reports but nobody
 * registered (empty deviceProfile, the kind the edge reported). */
export async function listDevices(org: string, site: string, edge: string): Promise<Device[]> {
  return pages(async (pageToken) => {
    const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}/edges/{edge}/devices", {
      params: { path: { organization: org, site, edge }, query: { pageSize: 1000, pageToken } },
    });
    if (!data) throw new Error(describeError(error, response));
    return { items: data.devices ?? [], next: data.nextPageToken ?? "" };
  });
}

export async function listDeviceProfiles(org: string): Promise<DeviceProfile[]> {
  return pages(async (pageToken) => {
    const { data, error, response } = await api.GET("/v1/organizations/{organization}/deviceProfiles", {
      params: { path: { organization: org }, query: { pageSize: 1000, pageToken } },
    });
    if (!data) throw new Error(describeError(error, response));
    return { items: data.deviceProfiles ?? [], next: data.nextPageToken ?? "" };
  });
}

/** One writable channel a setpoint can go to. */
export interface Writable {
  edge: string;
  device: string;
  deviceLabel: string;
  channel: string; // "<device>/<Channel>", relative to the edge (the command's address)
  unit: string;
  min?: number | undefined;
  max?: number | undefined;
  /** Input channels of the same device whose latest value limits positive / negative values. */
  dynamicMax?: string | undefined;
  dynamicMin?: string | undefined;
  enumValues: { number: number; label: string }[];
  valueType: string;
  description: string;
  /** False: the edge reports the device but nobody registered it, so no profile tells its limits. */
  registered: boolean;
}

const WRITABLE_ACCESS = new Set(["CHANNEL_ACCESS_READ_WRITE", "CHANNEL_ACCESS_WRITE_ONLY"]);
// A device only its edge reports carries no channel list in the REST API, but its kind says it takes
// a power setpoint (the edge daemon's battery and charger drivers all write SetActivePower in W).
const SETPOINT_KINDS = new Set(["DEVICE_KIND_BATTERY", "DEVICE_KIND_EV_CHARGER"]);

/** The writable channels of a site's edges: each device's profile's writable channels with unit and
 * static limits; a device reported but not registered, of a kind that takes a power setpoint, offers
 * SetActivePower without limits (the server still checks the edge's own declaration). */
export async function writableChannels(org: string, site: string, edges: string[]): Promise<Writable[]> {
  const [profiles, ...perEdge] = await Promise.all([
    listDeviceProfiles(org),
    ...edges.map((edge) => listDevices(org, site, edge)),
  ]);
  const byName = new Map((profiles as DeviceProfile[]).map((p) => [p.name ?? "", p]));
  const out: Writable[] = [];
  edges.forEach((edge, i) => {
    for (const d of (perEdge[i] ?? []) as Device[]) {
      const device = lastSegment(d.name);
      const deviceLabel = d.displayName && d.displayName !== device ? `${d.displayName} (${device})` : device;
      const profile = d.deviceProfile ? byName.get(d.deviceProfile) : undefined;
      if (profile) {
        for (const c of profile.channels ?? []) {
          if (!c.name || !WRITABLE_ACCESS.has(c.access ?? "")) continue;
          out.push({
            edge,
            device,
            deviceLabel,
            channel: `${device}/${c.name}`,
            unit: c.unit ?? "",
            min: c.minValue,
            max: c.maxValue,
            dynamicMax: c.dynamicMaxChannel || undefined,
            dynamicMin: c.dynamicMinChannel || undefined,
            enumValues: (c.enumValues ?? []).map((e) => ({ number: Number(e.number ?? 0), label: e.label ?? String(e.number ?? 0) })),
            valueType: c.valueType ?? "VALUE_TYPE_UNSPECIFIED",
            description: c.description ?? "",
            registered: true,
          });
        }
      } else if (!d.deviceProfile && SETPOINT_KINDS.has(d.kind ?? "")) {
        out.push({
          edge,
          device,
          deviceLabel,
          channel: `${device}/SetActivePower`,
          unit: "W",
          enumValues: [],
          valueType: "VALUE_TYPE_DOUBLE",
          description: "",
          registered: false,
        });
      }
    }
  });
  return out.sort((a, b) => (a.edge + a.channel).localeCompare(b.edge + b.channel));
}
