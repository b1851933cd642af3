// The alarms centre: the organization's open alarms, kept current by WatchAlarms over SSE, with
// acknowledge and shelve for operators (the API enforces the role too) and each rule's remediation.
import { useEffect, useState } from "preact/hooks";
import { api, describeError, lastSegment, type Schemas } from "../api";
import { roleIn } from "../auth";
import { openStream, type LinkState } from "../live";
import * as fmt from "../format";
import { onLinkClick } from "../router";
import { WatchedCommand } from "../components/commands";
import { AdvicePanel } from "../components/advice";
import { listSites } from "../data";
import { useLoad } from "../load";

type Alarm = Schemas["emma.alarm.v1.Alarm"];
type AlarmChange = Schemas["emma.alarm.v1.AlarmChange"];

const SEVERITY_ORDER: Record<string, number> = { ALARM_SEVERITY_CRITICAL: 0, ALARM_SEVERITY_WARNING: 1 };

function word(value: string | undefined, prefix: string): string {
  return (value ?? "").replace(prefix, "").replace(/_/g, " ").toLowerCase() || "–";
}

async function listOpen(org: string): Promise<Alarm[]> {
  const { data, error, response } = await api.GET("/v1/organizations/{organization}/alarms", {
    params: { path: { organization: org }, query: { pageSize: 1000 } },
  });
  if (!data) throw new Error(describeError(error, response));
  return data.alarms ?? [];
}

const SHELVE_HOURS = [1, 8, 24];

export function AlarmsPage({ org }: { org: string }) {
  const [alarms, setAlarms] = useState<Alarm[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [link, setLink] = useState<LinkState>("connecting");
  const [busy, setBusy] = useState<string | null>(null);
  const [shelveFor, setShelveFor] = useState<Record<string, number>>({});
  const [proposing, setProposing] = useState<{ alarm: string; index: number } | null>(null);
  const [sent, setSent] = useState<Record<string, string>>({}); // alarm name -> command name
  const canAct = ["ROLE_OPERATOR", "ROLE_ADMIN"].includes(roleIn(org));
  const sites = useLoad(() => listSites(org), [org]);
  const zones = new Map((sites.data ?? []).map((s) => [s.name ?? "", s.timeZone]));

  const reload = () =>
    listOpen(org).then(
      (list) => {
        setAlarms(list);
        setError(null);
      },
      (e: unknown) => setError(e instanceof Error ? e.message : String(e)),
    );

  useEffect(() => {
    setAlarms(null);
    void reload();
    return openStream<AlarmChange>(`/v1/organizations/${org}/alarms:watch?includeShelved=true`, {
      reconnect: true,
      onData: (change) => {
        const a = change.alarm;
        if (!a?.name) return;
        setAlarms((old) => {
          const rest = (old ?? []).filter((x) => x.name !== a.name);
          return a.state === "ALARM_STATE_CLEARED" ? rest : [a, ...rest];
        });
      },
      onState: (s) => {
        setLink(s);
        if (s === "live") void reload();
      },
    });
  }, [org]);

  async function act(alarm: Alarm, action: "acknowledge" | "shelve") {
    const id = lastSegment(alarm.name);
    setBusy(alarm.name ?? null);
    try {
      const path = { organization: org, alarm: id };
      const requestId = crypto.randomUUID();
      const result =
        action === "acknowledge"
          ? await api.POST("/v1/organizations/{organization}/alarms/{alarm}:acknowledge", { params: { path }, body: { requestId } })
          : await api.POST("/v1/organizations/{organization}/alarms/{alarm}:shelve", {
              params: { path },
              body: {
                requestId,
                shelveUntilTime: new Date(Date.now() + (shelveFor[id] ?? 1) * 3_600_000).toISOString(),
              },
            });
      if (!result.data) setError(`Could not ${action} the alarm: ${describeError(result.error, result.response)}`);
      else {
        const updated = result.data;
        setAlarms((old) => (old ?? []).map((x) => (x.name === updated.name ? updated : x)));
        setError(null);
      }
    } finally {
      setBusy(null);
    }
  }

  async function sendProposed(alarm: Alarm, index: number) {
    setBusy(alarm.name ?? null);
    try {
      const { data, error, response } = await api.POST("/v1/organizations/{organization}/alarms/{alarm}:sendCommand", {
        params: { path: { organization: org, alarm: lastSegment(alarm.name) } },
        body: { proposedCommand: index, requestId: crypto.randomUUID() },
      });
      if (!data?.command) setError(`Could not send the command: ${describeError(error, response)}`);
      else {
        setSent((old) => ({ ...old, [alarm.name ?? ""]: data.command! }));
        const updated = data.alarm;
        if (updated) setAlarms((old) => (old ?? []).map((x) => (x.name === updated.name ? updated : x)));
        setError(null);
      }
    } finally {
      setBusy(null);
      setProposing(null);
    }
  }

  const sorted = [...(alarms ?? [])].sort(
    (a, b) =>
      (SEVERITY_ORDER[a.severity ?? ""] ?? 2) - (SEVERITY_ORDER[b.severity ?? ""] ?? 2) ||
      (b.raiseTime ?? "").localeCompare(a.raiseTime ?? ""),
  );
  return (
    <section aria-labelledby="alarms-title">
      <h1 id="alarms-title">Alarms</h1>
      <p class="meta">
        Open alarms of the organization, newest first within each severity.{" "}
        <span class={`link link-${link}`} role="status" data-link={link}>
          {link === "live" ? "● live" : link === "reconnecting" ? "connection lost, reconnecting…" : "connecting…"}
        </span>
      </p>
      {error && <p role="alert" class="error">{error}</p>}
      {alarms === null && !error && <p aria-busy="true">Loading alarms…</p>}
      {alarms && sorted.length === 0 && <p>No open alarms.</p>}
      <ul class="alarms">
        {sorted.map((a) => {
          const id = lastSegment(a.name);
          const site = a.site ? a.site.split("/") : [];
          const tz = zones.get(a.site ?? ""); // times in the alarm's site's time zone, as on the site page
          return (
            <li key={a.name} class={`alarm sev-${word(a.severity, "ALARM_SEVERITY_")}`} data-alarm={id} data-state={a.state}>
              <div class="alarm-head">
                <span class="badge sev">{word(a.severity, "ALARM_SEVERITY_")}</span>{" "}
                <strong>{a.ruleDisplayName || lastSegment(a.rule)}</strong>{" "}
                <span class="alarm-state">{word(a.state, "ALARM_STATE_")}</span>
              </div>
              <p class="alarm-body">
                {a.message}
                {a.value !== undefined && <> · {fmt.number(a.value, a.unit)}</>} · raised {fmt.time(a.raiseTime, tz)}
                {site.length >= 4 && (
                  <>
                    {" · "}
                    <a href={`/${a.site}`} onClick={onLinkClick}>
                      site {site[3]}
                    </a>
                  </>
                )}
                {a.state === "ALARM_STATE_ACKNOWLEDGED" && a.acknowledgedBy && <> · acknowledged by {a.acknowledgedBy}</>}
                {a.state === "ALARM_STATE_SHELVED" && <> · shelved until {fmt.time(a.shelveUntilTime, tz)}</>}
              </p>
              {(a.remediationSteps ?? []).length > 0 && (
                <details>
                  <summary>What to do</summary>
                  <ol>
                    {(a.remediationSteps ?? []).map((s, i) => (
                      <li key={i}>{s}</li>
                    ))}
                  </ol>
                </details>
              )}
              {(a.proposedCommands ?? []).length > 0 && (
                <div class="advice">
                  <h2 class="small-heading">Recommended actions</h2>
                  <ul>
                    {(a.proposedCommands ?? []).map((p, i) => (
                      <li key={i}>
                        {p.title} <span class="meta small">({p.channel} = {fmt.number(p.value)})</span>{" "}
                        {canAct && a.state !== "ALARM_STATE_CLEARED" && (
                          <button
                            type="button"
                            class="secondary small"
                            disabled={busy === a.name}
                            onClick={() => setProposing({ alarm: a.name ?? "", index: i })}
                          >
                            Send: {p.title}
                          </button>
                        )}
                        {proposing && proposing.alarm === a.name && proposing.index === i && (
                          <span class="confirm" role="alertdialog" aria-label={`Confirm: ${p.title}`}>
                            Send {p.channel} = {fmt.number(p.value)} to the alarm's edge?{" "}
                            <button type="button" onClick={() => void sendProposed(a, i)}>
                              Confirm
                            </button>{" "}
                            <button type="button" class="secondary" onClick={() => setProposing(null)}>
                              Cancel
                            </button>
                          </span>
                        )}
                      </li>
                    ))}
                  </ul>
                  {sent[a.name ?? ""] && <WatchedCommand name={sent[a.name ?? ""]!} timeZone={tz} />}
                </div>
              )}
              {canAct && (
                <div class="alarm-actions">
                  {a.state === "ALARM_STATE_ACTIVE" && (
                    <button type="button" disabled={busy === a.name} onClick={() => void act(a, "acknowledge")}>
                      Acknowledge
                    </button>
                  )}
                  {a.state !== "ALARM_STATE_SHELVED" && (
                    <span class="shelve">
                      <label>
                        <span class="sr-only">Shelve for</span>
                        <select
                          value={String(shelveFor[id] ?? 1)}
                          onChange={(e) => setShelveFor({ ...shelveFor, [id]: Number((e.currentTarget as HTMLSelectElement).value) })}
                        >
                          {SHELVE_HOURS.map((h) => (
                            <option key={h} value={String(h)}>
                              {h} h
                            </option>
                          ))}
                        </select>
                      </label>
                      <button type="button" class="secondary" disabled={busy === a.name} onClick={() => void act(a, "shelve")}>
                        Shelve
                      </button>
                    </span>
                  )}
                </div>
              )}
            </li>
          );
        })}
      </ul>
      {sites.error && <p role="alert" class="error">Could not list the sites: {sites.error}</p>}
      <AdvicePanel org={org} sites={sites.data} canDecide={canAct} />
    </section>
  );
}
