// Fleet overview: a map and a table of every site of the organization with its state, open alarms and grid power now. One request per
// site for edges and latest values; a fleet summary RPC replaces this when fleets get large.
import { api, describeError, lastSegment, type Schemas, type Site } from "../api";
import { gridPowerW, latestValues, listEdges, listSites, siteState, type SiteState } from "../data";
import * as fmt from "../format";
import { useLoad } from "../load";
import { FleetDispatchPanel } from "../components/dispatch";
import { FleetMap } from "../components/map";
import { roleIn } from "../auth";
import { flexibilityOf, type Flexibility } from "../energy";
import { navigate, onLinkClick } from "../router";

interface Row {
  site: Site;
  id: string;
  state: SiteState;
  gridW: number | undefined;
  flex: Flexibility;
  lastSeen: string | undefined;
  problem: string | undefined;
  alarms: AlarmCount;
}

interface AlarmCount {
  critical: number;
  total: number;
}

/** Open alarms per site (shelved ones left out: someone decided they can wait), from one list of the
 * organization's alarms. */
async function alarmsPerSite(org: string): Promise<Map<string, AlarmCount>> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/alarms", {
    params: { path: { organization: org }, query: { pageSize: 1000 } },
  });
  if (!data) throw new Error(describeError(error, response));
  const out = new Map<string, AlarmCount>();
  for (const a of (data.alarms ?? []) as Schemas["emma.alarm.v1.Alarm"][]) {
    if (!a.site || a.state === "ALARM_STATE_SHELVED" || a.state === "ALARM_STATE_CLEARED") continue;
    const c = out.get(a.site) ?? { critical: 0, total: 0 };
    c.total += 1;
    if (a.severity === "ALARM_SEVERITY_CRITICAL") c.critical += 1;
    out.set(a.site, c);
  }
  return out;
}

function alarmWords(c: AlarmCount): string {
  if (c.total === 0) return "none";
  return `${c.total} open${c.critical ? `, ${c.critical} critical` : ""}`;
}

async function fleet(org: string): Promise<Row[]> {
  const [sites, alarms] = await Promise.all([listSites(org), alarmsPerSite(org).catch((e: unknown) => e as Error)]);
  return Promise.all(
    sites.map(async (site): Promise<Row> => {
      const id = lastSegment(site.name);
      const [edges, values] = await Promise.allSettled([listEdges(org, id), latestValues(org, id)]);
      const edgeList = edges.status === "fulfilled" ? edges.value : [];
      const seen = edgeList.map((e) => e.lastSeenTime ?? "").filter(Boolean).sort();
      const problems = [edges, values].filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason?.message ?? r));
      if (alarms instanceof Error) problems.push(`alarms: ${alarms.message}`);
      return {
        site,
        id,
        state: siteState(edgeList),
        gridW: values.status === "fulfilled" ? gridPowerW(values.value) : undefined,
        flex: flexibilityOf(values.status === "fulfilled" ? values.value : []),
        lastSeen: seen[seen.length - 1],
        problem: problems.join("; ") || undefined,
        alarms: (alarms instanceof Error ? undefined : alarms.get(site.name ?? "")) ?? { critical: 0, total: 0 },
      };
    }),
  );
}

export function FleetPage({ org }: { org: string }) {
  const rows = useLoad(() => fleet(org), [org], 10_000);
  const data = rows.data ?? [];
  const online = data.filter((r) => r.state === "online").length;
  const withPower = data.filter((r) => r.gridW !== undefined);
  const totalW = withPower.reduce((sum, r) => sum + (r.gridW ?? 0), 0);
  const batteries = data.reduce((n, r) => n + r.flex.batteries, 0);
  const upW = data.reduce((n, r) => n + r.flex.upW, 0);
  const downW = data.reduce((n, r) => n + r.flex.downW, 0);
  const openAlarms = data.reduce((n, r) => n + r.alarms.total, 0);
  const role = roleIn(org);
  const canDispatch = role === "ROLE_OPERATOR" || role === "ROLE_ADMIN";
  return (
    <section aria-labelledby="fleet-title">
      <h1 id="fleet-title">Fleet overview</h1>
      {rows.error && (
        <p role="alert" class="error">
          Could not load the sites: {rows.error}
        </p>
      )}
      {rows.loading && !rows.data && <p aria-busy="true">Loading sites…</p>}
      {rows.data && (
        <>
          <dl class="totals" aria-live="polite">
            <div>
              <dt>Sites</dt>
              <dd>{data.length}</dd>
            </div>
            <div>
              <dt>Online</dt>
              <dd>{online}</dd>
            </div>
            <div>
              <dt>Grid power now</dt>
              <dd>{withPower.length ? fmt.power(totalW) : "–"}</dd>
            </div>
            <div data-total="alarms">
              <dt>Open alarms</dt>
              <dd>
                <a href={`/organizations/${org}/alarms`} onClick={onLinkClick}>
                  {openAlarms}
                </a>
              </dd>
            </div>
            <div data-vpp="up">
              <dt>Flexibility up</dt>
              <dd>{batteries ? fmt.power(upW) : "–"}</dd>
            </div>
            <div data-vpp="down">
              <dt>Flexibility down</dt>
              <dd>{batteries ? fmt.power(downW) : "–"}</dd>
            </div>
          </dl>
          {data.some((r) => r.site.location) && (
            <FleetMap
              onOpen={(href) => navigate(href)}
              sites={data
                .filter((r) => r.site.location)
                .map((r) => ({
                  id: r.id,
                  label: r.site.displayName || r.id,
                  lat: r.site.location?.latitudeDeg ?? 0,
                  lon: r.site.location?.longitudeDeg ?? 0,
                  state: r.state,
                  href: `/organizations/${org}/sites/${r.id}`,
                  detail: [r.gridW === undefined ? "" : `grid ${fmt.power(r.gridW)}`, r.alarms.total ? `alarms ${alarmWords(r.alarms)}` : ""]
                    .filter(Boolean)
                    .join(" · "),
                }))}
            />
          )}
          {data.length === 0 ? (
            <p>This organization has no sites yet.</p>
          ) : (
            <div class="table-scroll">
              <table class="sites">
                <caption class="sr-only">Sites with their state, open alarms and grid power now</caption>
                <thead>
                  <tr>
                    <th scope="col">Site</th>
                    <th scope="col">State</th>
                    <th scope="col">Alarms</th>
                    <th scope="col" class="num">Grid power now</th>
                    <th scope="col">Last seen</th>
                  </tr>
                </thead>
                <tbody>
                  {data.map((r) => (
                    <tr key={r.id} data-site={r.id}>
                      <th scope="row">
                        <a href={`/organizations/${org}/sites/${r.id}`} onClick={onLinkClick}>
                          {r.site.displayName || r.id}
                        </a>
                        {r.problem && <span class="error small"> ({r.problem})</span>}
                      </th>
                      <td>
                        <span class={`state state-${r.state.replace(/ /g, "-")}`}>{r.state}</span>
                      </td>
                      <td data-alarms={r.alarms.total}>
                        <span class={r.alarms.critical ? "bad" : r.alarms.total ? "warn" : "meta"}>{alarmWords(r.alarms)}</span>
                      </td>
                      <td class="num">{fmt.power(r.gridW)}</td>
                      <td>{fmt.time(r.lastSeen, r.site.timeZone)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
      {rows.data && canDispatch && (
        <section aria-labelledby="dispatch-title" class="panel">
          <h2 id="dispatch-title">Fleet dispatch</h2>
          <p class="meta small">
            Flexibility is the batteries' headroom from their dynamic limits and their power now ({batteries} batter{batteries === 1 ? "y" : "ies"}).
          </p>
          <FleetDispatchPanel org={org} />
        </section>
      )}
    </section>
  );
}
