// The advisory panel of the alarms centre: each site's latest recommendations from recommendation
// services (emma.alarm.v1 ListRecommendations), open ones first, with accept and dismiss (and a note)
// for operators and admins; viewers read them only (the API refuses them anyway). There is no watch
// stream for recommendations, so the panel reads them again every 30 s and after each decision.
import { useState } from "preact/hooks";
import { api, describeError, lastSegment, type Schemas, type Site } from "../api";
import * as fmt from "../format";
import { useLoad } from "../load";
import { onLinkClick } from "../router";

type Recommendation = Schemas["emma.alarm.v1.Recommendation"];

/** How many of a site's newest recommendations the panel reads (open ones and the latest decisions). */
export const PER_SITE = 10;
const REFRESH_MS = 30_000;

async function latestRecommendations(org: string, site: string): Promise<Recommendation[]> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/sites/{site}/recommendations", {
    params: { path: { organization: org, site }, query: { pageSize: PER_SITE } },
  });
  if (!data) throw new Error(describeError(error, response));
  return data.recommendations ?? [];
}

async function allSites(org: string, sites: Site[]): Promise<[string, Recommendation[]][]> {
  const ids = sites.map((s) => lastSegment(s.name));
  const lists = await Promise.all(ids.map((id) => latestRecommendations(org, id)));
  return ids.map((id, i) => [id, lists[i] ?? []]);
}

function stateWord(state: string | undefined): string {
  return (state ?? "").replace("RECOMMENDATION_STATE_", "").toLowerCase() || "–";
}

export function AdvicePanel({ org, sites, canDecide }: { org: string; sites: Site[] | undefined; canDecide: boolean }) {
  const [round, setRound] = useState(0);
  const [notes, setNotes] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const key = (sites ?? []).map((s) => s.name).join(",");
  const loaded = useLoad(() => (sites ? allSites(org, sites) : Promise.resolve([])), [org, key, round], REFRESH_MS);
  const names = new Map((sites ?? []).map((s) => [lastSegment(s.name), s.displayName || lastSegment(s.name)]));
  const zones = new Map((sites ?? []).map((s) => [lastSegment(s.name), s.timeZone]));

  async function decide(r: Recommendation, action: "accept" | "dismiss") {
    const [, , , site, , id] = (r.name ?? "").split("/");
    if (!site || !id) return;
    setBusy(r.name ?? null);
    try {
      const path = { organization: org, site, recommendation: id };
      const body = { note: (notes[r.name ?? ""] ?? "").trim(), requestId: crypto.randomUUID() };
      const result =
        action === "accept"
          ? await api.POST("/v1/organizations/{organization}/sites/{site}/recommendations/{recommendation}:accept", { params: { path }, body })
          : await api.POST("/v1/organizations/{organization}/sites/{site}/recommendations/{recommendation}:dismiss", { params: { path }, body });
      if (!result.data) setProblem(`Could not ${action} "${r.title}": ${describeError(result.error, result.response)}`);
      else setProblem(null);
    } catch (e) {
      setProblem(`The server could not be reached (${e instanceof Error ? e.message : String(e)}).`);
    } finally {
      setBusy(null);
      setRound((n) => n + 1);
    }
  }

  const perSite = (loaded.data ?? []).filter(([, list]) => list.length > 0);
  const open = perSite.reduce((n, [, list]) => n + list.filter((r) => r.state === "RECOMMENDATION_STATE_OPEN").length, 0);
  return (
    <section aria-labelledby="advice-title" class="panel advice-panel" data-open-recommendations={loaded.data ? open : undefined}>
      <h2 id="advice-title">Recommendations</h2>
      <p class="meta small">
        Advice from recommendation services, the {PER_SITE} newest per site; {open === 1 ? "1 is" : `${open} are`} waiting for a decision.
      </p>
      {loaded.error && <p role="alert" class="error">Could not read the recommendations: {loaded.error}</p>}
      {problem && <p role="alert" class="error">{problem}</p>}
      {loaded.data && perSite.length === 0 && <p>No recommendations.</p>}
      {perSite.map(([site, list]) => (
        <div key={site} class="advice-site" data-site={site}>
          <h3>
            <a href={`/organizations/${org}/sites/${site}`} onClick={onLinkClick}>
              {names.get(site) ?? site}
            </a>
          </h3>
          <ul class="recommendations">
            {[...list]
              .sort((a, b) => Number(b.state === "RECOMMENDATION_STATE_OPEN") - Number(a.state === "RECOMMENDATION_STATE_OPEN"))
              .map((r) => {
                const id = lastSegment(r.name);
                const isOpen = r.state === "RECOMMENDATION_STATE_OPEN";
                const tz = zones.get(site);
                return (
                  <li key={r.name} class={`recommendation rec-${stateWord(r.state)}`} data-recommendation={id} data-state={r.state}>
                    <div>
                      <strong>{r.title}</strong> <span class="badge">{stateWord(r.state)}</span>
                    </div>
                    {r.detail && <p class="rec-detail">{r.detail}</p>}
                    <p class="meta small">
                      {r.source} · confidence {fmt.number(Math.round((r.confidence ?? 0) * 100), "%")} · posted {fmt.time(r.createTime, tz)}
                      {(r.devices ?? []).length > 0 && <> · devices {(r.devices ?? []).map((d) => lastSegment(d)).join(", ")}</>}
                      {!isOpen && r.decidedBy && (
                        <>
                          {" · "}
                          {stateWord(r.state)} by {r.decidedBy} {fmt.time(r.decideTime, tz)}
                          {r.decisionNote && <> (“{r.decisionNote}”)</>}
                        </>
                      )}
                    </p>
                    {isOpen && canDecide && (
                      <div class="rec-actions">
                        <label>
                          <span class="sr-only">Note on {r.title}</span>
                          <input
                            class="note"
                            placeholder="Note (optional)"
                            maxLength={500}
                            value={notes[r.name ?? ""] ?? ""}
                            onInput={(e) => setNotes({ ...notes, [r.name ?? ""]: (e.currentTarget as HTMLInputElement).value })}
                          />
                        </label>{" "}
                        <button type="button" aria-label={`Accept: ${r.title}`} disabled={busy === r.name} onClick={() => void decide(r, "accept")}>
                          Accept
                        </button>{" "}
                        <button
                          type="button"
                          class="secondary"
                          aria-label={`Dismiss: ${r.title}`}
                          disabled={busy === r.name}
                          onClick={() => void decide(r, "dismiss")}
                        >
                          Dismiss
                        </button>
                      </div>
                    )}
                  </li>
                );
              })}
          </ul>
        </div>
      ))}
    </section>
  );
}
