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
