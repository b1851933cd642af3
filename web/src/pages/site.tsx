// The site page: the living energy flow and the devices' heartbeats over the gateway's SSE stream
// (`:streamLiveValues`), setpoints for operators, and the charts of history, prices, forecasts and plan.
import { useEffect, useMemo, useState } from "preact/hooks";
import { lastSegment, type LatestValue } from "../api";
import { roleIn } from "../auth";
import { ForecastChart, HistoryChart, PlanChart, PriceChart } from "../components/charts";
import { SavingsPanel } from "../components/savings";
import { CommandPanel, type Target } from "../components/commands";
import { EnergyFlow } from "../components/flow";
import { getSite, latestValues, listEdges, siteState, writableChannels } from "../data";
import { flowOf, isPowerChannel, parseChannel, roleOf } from "../energy";
import * as fmt from "../format";
import { openStream, type LinkState } from "../live";
import { useLoad, useNow } from "../load";

type LiveMessage = import("../api").Schemas["emma.telemetry.v1.StreamLiveValuesResponse"];

/** A device whose newest sample is older than this is marked stale. */
export const STALE_MS = 120_000;

function useLiveValues(org: string, site: string): { values: Map<string, LatestValue>; link: LinkState; detail: string; error?: string | undefined } {
  const [values, setValues] = useState<Map<string, LatestValue>>(new Map());
  const [link, setLink] = useState<LinkState>("connecting");
  const [detail, setDetail] = useState("");
  const [error, setError] = useState<string | undefined>();
  useEffect(() => {
    let live = true;
    setValues(new Map());
    const merge = (list: LatestValue[]) =>
      setValues((old) => {
        const next = new Map(old);
        for (const v of list) {
          if (!v.channel) continue;
          const prev = next.get(v.channel);
          if (!prev || (v.sampleTime ?? "") >= (prev.sampleTime ?? "")) next.set(v.channel, v);
        }
        return next;
      });
    // The snapshot first, then the stream's changes; a reconnect reads the snapshot again, so nothing
    // sent while the stream was down is missed.
    const snapshot = () =>
      latestValues(org, site).then(
        (list) => live && (merge(list), setError(undefined)),
        (e: unknown) => live && setError(e instanceof Error ? e.message : String(e)),
      );
    const stop = openStream<LiveMessage>(`/v1/organizations/${org}/sites/${site}:streamLiveValues`, {
      reconnect: true,
      onData: (m) => merge(m.values ?? []),
      onState: (s, d) => {
        if (!live) return;
        setLink(s);
        if (d !== undefined) setDetail(d);
        if (s === "live") void snapshot();
      },
    });
    return () => {
      live = false;
      stop();
    };
  }, [org, site]);
  return { values, link, detail, error };
}

interface DeviceRow {
  edge: string;
  device: string;
  role: string;
  lastSample: string | undefined;
  summary: string;
}

function devicesOf(values: Iterable<LatestValue>): DeviceRow[] {
  const byDevice = new Map<string, DeviceRow & { parts: string[] }>();
  for (const v of values) {
    const ref = parseChannel(v.channel);
    if (!ref) continue;
    const key = `${ref.edge}/${ref.device}`;
    const row = byDevice.get(key) ?? { edge: ref.edge, device: ref.device, role: roleOf(ref.device), lastSample: undefined, summary: "", parts: [] };
    if (!row.lastSample || (v.sampleTime ?? "") > row.lastSample) row.lastSample = v.sampleTime;
    row.parts.push(`${ref.channel} ${isPowerChannel(ref, v.unit) ? fmt.power(v.value) : fmt.number(v.value, v.unit)}`);
    byDevice.set(key, row);
  }
  return [...byDevice.values()]
    .map((r) => ({ ...r, summary: r.parts.sort().join(" · ") }))
    .sort((a, b) => (a.edge + a.device).localeCompare(b.edge + b.device));
}

export function SitePage({ org, site }: { org: string; site: string }) {
  const info = useLoad(() => getSite(org, site), [org, site]);
  const edges = useLoad(() => listEdges(org, site), [org, site], 10_000);
  const live = useLiveValues(org, site);
  const now = useNow(5_000);
  const tz = info.data?.timeZone;
  const values = [...live.values.values()];
  const flow = flowOf(values);
  const devices = devicesOf(values);
  const powerChannels = useMemo(
    () =>
      values
        .filter((v) => {
          const ref = parseChannel(v.channel);
          return ref && isPowerChannel(ref, v.unit) && roleOf(ref.device) !== "other";
        })
        .map((v) => v.channel!)
        .sort(),
    [values.map((v) => v.channel).sort().join(",")],
  );
  const role = roleIn(org);
  const canCommand = role === "ROLE_OPERATOR" || role === "ROLE_ADMIN";
  const edgeIds = (edges.data ?? []).map((e) => lastSegment(e.name));
  const prefix = `organizations/${org}/sites/${site}/edges/`;
  // The writable channels of the edges' devices as their device profiles declare them (re-read when
  // the set of edges changes, not on every poll).
  const writable = useLoad(
    () => (canCommand && edgeIds.length ? writableChannels(org, site, edgeIds) : Promise.resolve([] as Target[])),
    [org, site, canCommand, edgeIds.join(",")],
  );
  const latestOf = (edge: string, channel: string) => {
    const [device, name] = channel.split("/");
    return live.values.get(`${prefix}${edge}/devices/${device}/channels/${name}`)?.value;
  };

  return (
    <section aria-labelledby="site-title" class="site">
      <h1 id="site-title">{info.data?.displayName || site}</h1>
      {info.error && <p role="alert" class="error">{info.error}</p>}
      <p class="meta">
        {info.data && [tz, info.data.countryCode, info.data.biddingZone && `zone ${info.data.biddingZone}`].filter(Boolean).join(" · ")}
        {edges.data && <> · <span class="state">{siteState(edges.data)}</span></>}{" "}
        <span class={`link link-${live.link}`} role="status" data-link={live.link}>
          {live.link === "live"
            ? "● live"
            : live.link === "reconnecting"
              ? `connection lost, reconnecting…${live.detail ? ` (${live.detail})` : ""}`
              : "connecting…"}
        </span>
      </p>
      {live.error && <p role="alert" class="error">{live.error}</p>}

      <div class="site-grid">
        <section aria-labelledby="flow-title" class="panel">
          <h2 id="flow-title">Energy flow</h2>
          <EnergyFlow flow={flow} />
        </section>
        <section aria-labelledby="devices-title" class="panel">
          <h2 id="devices-title">Devices</h2>
          {devices.length === 0 && <p>No values received yet.</p>}
          {devices.length > 0 && (
            <div class="table-scroll">
              <table class="devices">
                <thead>
                  <tr>
                    <th scope="col">Device</th>
                    <th scope="col">Now</th>
                    <th scope="col">Last seen</th>
                  </tr>
                </thead>
                <tbody>
                  {devices.map((d) => {
                    const age = d.lastSample ? now - Date.parse(d.lastSample) : Infinity;
                    const stale = age > STALE_MS;
                    return (
                      <tr key={`${d.edge}/${d.device}`} data-device={d.device} class={stale ? "stale" : ""}>
                        <th scope="row">
                          {d.device}
                          <span class="small meta"> {d.edge}</span>
                        </th>
                        <td class="wrap">{d.summary}</td>
                        <td>
                          {fmt.time(d.lastSample, tz)}
                          {stale && <span class="badge bad"> stale</span>}
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          )}
          <h3>Edges</h3>
          {edges.error && <p role="alert" class="error">{edges.error}</p>}
          <ul class="edges">
            {(edges.data ?? []).map((e) => (
              <li key={e.name} data-edge={lastSegment(e.name)}>
                <strong>{e.displayName || lastSegment(e.name)}</strong>{" "}
                {(e.connectionState ?? "EDGE_CONNECTION_STATE_UNSPECIFIED").replace("EDGE_CONNECTION_STATE_", "").replace("_", " ").toLowerCase()}
                {" · last heartbeat "}
                {fmt.time(e.lastSeenTime, tz)}
              </li>
            ))}
          </ul>
        </section>
      </div>

      {canCommand && (
        <section aria-labelledby="commands-title" class="panel">
          <h2 id="commands-title">Commands</h2>
          {writable.error && <p role="alert" class="error">Could not list the writable channels: {writable.error}</p>}
          {edges.data && writable.data && !(writable.loading && writable.data.length === 0) ? (
            <CommandPanel org={org} site={site} targets={writable.data} timeZone={tz} latest={latestOf} />
          ) : (
            !writable.error && <p aria-busy="true">Loading the devices' writable channels…</p>
          )}
        </section>
      )}

      <HistoryChart org={org} site={site} channels={powerChannels} timeZone={tz} />
      {info.data && <PriceChart site={info.data} />}
      <ForecastChart org={org} site={site} timeZone={tz} />
      <PlanChart org={org} site={site} edges={edgeIds} timeZone={tz} measuredChannels={powerChannels} canPlan={canCommand} />
      <SavingsPanel org={org} site={site} />

      <h2>Latest values</h2>
      {values.length === 0 && <p>No values received yet.</p>}
      {values.length > 0 && (
        <div class="table-scroll">
          <table class="latest">
            <thead>
              <tr>
                <th scope="col">Channel</th>
                <th scope="col" class="num">Value</th>
                <th scope="col">Measured</th>
              </tr>
            </thead>
            <tbody>
              {values
                .sort((a, b) => (a.channel ?? "").localeCompare(b.channel ?? ""))
                .map((v) => (
                  <tr key={v.channel}>
                    <th scope="row">{(v.channel ?? "").replace(prefix, "").replace("/devices/", " › ").replace("/channels/", " › ")}</th>
                    <td class="num">{fmt.number(v.value, v.unit)}</td>
                    <td>{fmt.time(v.sampleTime, tz)}</td>
                  </tr>
                ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
