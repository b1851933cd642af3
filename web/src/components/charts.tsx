// The site page's charts: power history (drag to zoom loads finer buckets from the rollups), the day-
// ahead prices of the site's zone with negative slots highlighted, the PV and load forecasts with their
// p10-p90 bands, and the optimizer's plan in force against what was measured.
import { useMemo, useState } from "preact/hooks";
import { api, describeError, type Schemas, type Site } from "../api";
import {
  activeSchedule,
  latestForecast,
  priceCurve,
  queryHistory,
  seconds,
  type ActiveSchedule,
  type Forecast,
} from "../data";
import { parseChannel, roleOf } from "../energy";
import * as fmt from "../format";
import { useLoad, useNow } from "../load";
import { Chart, cssVar, uPlot, type ChartData } from "./chart";

const HOUR = 3600;

type OptimizationRun = Schemas["emma.optimizer.v1.OptimizationRun"];
const PALETTE = ["#0b6e4f", "#0550ae", "#bf3989", "#9a6700", "#6639ba", "#a40e26", "#1a7f37", "#57606a"];

function colour(i: number): string {
  return PALETTE[i % PALETTE.length]!;
}

function epoch(iso: string | undefined): number {
  return iso ? Date.parse(iso) / 1000 : NaN;
}

// Periods a keyboard can choose (dragging needs a pointer); 24 hours is the sliding default.
const PRESETS: [string, number][] = [
  ["2 hours", 2],
  ["24 hours", 24],
  ["7 days", 24 * 7],
  ["30 days", 24 * 30],
];

/** Buckets of whole minutes giving about 400 points; raw samples for two hours or less. */
export function intervalFor(spanS: number): number {
  if (spanS <= 2 * HOUR) return 0;
  return Math.max(1, Math.ceil(spanS / 400 / 60)) * 60;
}

export function HistoryChart({ org, site, channels, timeZone }: { org: string; site: string; channels: string[]; timeZone?: string | undefined }) {
  const [range, setRange] = useState<[number, number] | null>(null);
  const key = channels.join(",");
  // The last 24 hours slide once a minute (each slide loads the window again); a zoomed range stays.
  const minute = Math.ceil(useNow(60_000) / 60_000) * 60;
  const window = useMemo<[number, number]>(() => range ?? [minute - 24 * HOUR, minute], [range, minute]);
  const interval = intervalFor(window[1] - window[0]);
  const history = useLoad(
    () =>
      channels.length
        ? queryHistory(org, site, channels.slice(0, 100), new Date(window[0] * 1000), new Date(window[1] * 1000), interval)
        : Promise.resolve([]),
    [org, site, key, window[0], window[1]],
  );
  const series = history.data ?? [];
  const data = useMemo<ChartData>(() => {
    const tables = series.map((s): ChartData => [
      (s.points ?? []).map((p) => epoch(p.time)),
      (s.points ?? []).map((p) => p.value ?? null),
    ]);
    return tables.length ? uPlot.join(tables) : [[]];
  }, [series]);
  const labels = series.map((s) => {
    const ref = parseChannel(s.channel);
    return ref ? `${ref.device} ${ref.channel}` : s.channel ?? "";
  });
  return (
    <section aria-labelledby="history-title">
      <h2 id="history-title">Power history</h2>
      <p class="meta small" data-history-interval={interval}>
        {fmt.time(new Date(window[0] * 1000).toISOString(), timeZone)} – {fmt.time(new Date(window[1] * 1000).toISOString(), timeZone)}
        {" · "}
        {interval ? `${interval / 60}-minute averages` : "every sample"} · drag across the chart to zoom in
      </p>
      <div class="ranges" role="group" aria-label="Period">
        {PRESETS.map(([label, hours]) => {
          const current = range ? range[1] - range[0] === hours * HOUR && range[1] === minute : hours === 24;
          return (
            <button
              key={label}
              type="button"
              class="secondary small"
              aria-pressed={current}
              onClick={() => setRange(hours === 24 ? null : [minute - hours * HOUR, minute])}
            >
              {label}
            </button>
          );
        })}
      </div>
      {history.error && <p role="alert" class="error">{history.error}</p>}
      {channels.length === 0 && <p>No power channels yet.</p>}
      {series.length > 0 && (
        <Chart
          label={`Power history of ${labels.join(", ")}`}
          testId="history"
          mark={{ interval: history.loading ? -1 : interval }}
          timeZone={timeZone}
          yLabel="W"
          series={labels.map((label, i) => ({ label, stroke: colour(i), width: 1.5 }))}
          data={data}
          xRange={window}
          onZoom={(from, to) => {
            const lo = Math.max(window[0], Math.floor(from));
            const hi = Math.min(window[1], Math.ceil(to));
            if (hi - lo >= 60) setRange([lo, hi]);
          }}
        />
      )}
    </section>
  );
}

export interface NegativeSlot {
  start: string;
  end: string;
  value: number;
}

export function PriceChart({ site }: { site: Site }) {
  const zone = site.biddingZone ?? "";
  const tz = site.timeZone;
  const curve = useLoad(
    () => {
      const now = Date.now();
      const from = new Date(Math.floor(now / 3_600_000) * 3_600_000 - 24 * 3_600_000);
      const to = new Date(from.getTime() + 72 * 3_600_000);
      return zone ? priceCurve(zone, from, to) : Promise.resolve(undefined);
    },
    [zone],
    15 * 60_000,
  );
  const points = curve.data?.points ?? [];
  const unit = `${curve.data?.currency || "EUR"}/${(curve.data?.unit || "MWh").replace("MWH", "MWh")}`;
  const negatives: NegativeSlot[] = points
    .filter((p) => (p.value ?? 0) < 0)
    .map((p) => ({ start: p.startTime ?? "", end: p.endTime ?? "", value: p.value ?? 0 }));
  const data = useMemo<ChartData>(() => {
    const xs = points.map((p) => epoch(p.startTime));
    return [xs, points.map((p) => ((p.value ?? 0) >= 0 ? p.value ?? 0 : null)), points.map((p) => ((p.value ?? 0) < 0 ? p.value ?? 0 : null))];
  }, [points]);
  const bars = uPlot.paths.bars!({ size: [0.9, 40], align: 1 });
  return (
    <section aria-labelledby="prices-title">
      <h2 id="prices-title">Prices{zone && <span class="small"> · zone {zone}, day-ahead</span>}</h2>
      {!zone && <p>This site has no bidding zone; set one to see its prices.</p>}
      {curve.error && <p role="alert" class="error">{curve.error}</p>}
      {zone && curve.data && points.length === 0 && <p>No prices published for this period yet.</p>}
      {points.length > 0 && (
        <>
          <Chart
            label={`Day-ahead prices in ${unit}${negatives.length ? `, ${negatives.length} negative` : ""}`}
            testId="prices"
            timeZone={tz}
            yLabel={unit}
            series={[
              { label: `Price (${unit})`, stroke: cssVar("--accent", "#0b6e4f"), fill: "rgba(11,110,79,.35)", paths: bars, points: { show: false } },
              { label: "Negative price", stroke: cssVar("--bad", "#a40e26"), fill: "rgba(164,14,38,.55)", paths: bars, points: { show: false } },
            ]}
            data={data}
          />
          <p class="negatives" data-negative-slots={negatives.length}>
            {negatives.length === 0
              ? "No negative prices in this period."
              : `Negative prices in ${negatives.length} slot${negatives.length > 1 ? "s" : ""}: ` +
                negatives
                  .slice(0, 8)
                  .map((n) => `${fmt.time(n.start, tz)} (${fmt.number(n.value)} ${unit})`)
                  .join("; ") +
                (negatives.length > 8 ? "; …" : "")}
          </p>
        </>
      )}
    </section>
  );
}

function forecastTable(f: Forecast | undefined): ChartData {
  const slots = f?.slots ?? [];
  return [slots.map((s) => epoch(s.startTime)), slots.map((s) => s.p10W ?? null), slots.map((s) => s.p50W ?? null), slots.map((s) => s.p90W ?? null)];
}

export function ForecastChart({ org, site, timeZone }: { org: string; site: string; timeZone?: string | undefined }) {
  const forecasts = useLoad(
    () => Promise.all([latestForecast(org, site, "FORECAST_KIND_PV_POWER"), latestForecast(org, site, "FORECAST_KIND_SITE_LOAD")]),
    [org, site],
    10 * 60_000,
  );
  const [pv, load] = forecasts.data ?? [undefined, undefined];
  const data = useMemo<ChartData>(() => {
    const tables = [pv, load].filter((f): f is Forecast => !!f).map(forecastTable);
    return tables.length ? uPlot.join(tables) : [[]];
  }, [pv, load]);
  const series: uPlot.Series[] = [];
  const bands: uPlot.Band[] = [];
  const kinds = [
    { f: pv, name: "PV", c: "#9a6700", fill: "rgba(154,103,0,.18)" },
    { f: load, name: "Load", c: "#0550ae", fill: "rgba(5,80,174,.18)" },
  ].filter((k) => k.f);
  kinds.forEach((k, i) => {
    const base = i * 3 + 1;
    series.push(
      { label: `${k.name} p10`, stroke: k.c, width: 0.5, dash: [4, 4], points: { show: false } },
      { label: `${k.name} p50`, stroke: k.c, width: 2, points: { show: false } },
      { label: `${k.name} p90`, stroke: k.c, width: 0.5, dash: [4, 4], points: { show: false } },
    );
    bands.push({ series: [base + 2, base], fill: k.fill });
  });
  return (
    <section aria-labelledby="forecast-title">
      <h2 id="forecast-title">Forecasts</h2>
      {forecasts.error && <p role="alert" class="error">{forecasts.error}</p>}
      {forecasts.data && kinds.length === 0 && <p>No forecast for this site yet.</p>}
      {kinds.length > 0 && (
        <>
          <Chart
            label={`Forecasts with their p10 to p90 bands: ${kinds.map((k) => k.name).join(" and ")}`}
            testId="forecast"
            timeZone={timeZone}
            yLabel="W"
            series={series}
            bands={bands}
            data={data}
          />
          <p class="meta small" data-forecast-kinds={kinds.map((k) => k.name).join(",")}>
            {kinds
              .map((k) => `${k.name}: issued ${fmt.time(k.f!.issueTime, timeZone)}, ${(k.f!.slots ?? []).length} slots, model ${k.f!.modelVersion || "–"}`)
              .join(" · ")}
            {kinds.some((k) => (k.f!.degradedReasons ?? []).length) && (
              <> · degraded: {kinds.flatMap((k) => k.f!.degradedReasons ?? []).join("; ")}</>
            )}
          </p>
        </>
      )}
    </section>
  );
}

/** Where a plan stands with one edge, in words: an operator must see a plan the edge refused. */
function deliveryText(delivery: ActiveSchedule["delivery"], timeZone?: string): string {
  switch (delivery?.state) {
    case "SCHEDULE_DELIVERY_STATE_ACCEPTED":
      return `plan accepted at ${fmt.time(delivery.answerTime, timeZone)}.`;
    case "SCHEDULE_DELIVERY_STATE_REFUSED":
      return `plan refused at ${fmt.time(delivery.answerTime, timeZone)} (${delivery.refusalReason ?? ""}); the edge keeps the plan it had.`;
    case "SCHEDULE_DELIVERY_STATE_SENT":
      return `plan sent at ${fmt.time(delivery.lastSendTime, timeZone)}, no answer yet.`;
    default:
      return "plan not sent yet; the edge gets it when it connects.";
  }
}

/** What a finished run says to the operator who asked for it. */
function runText(run: OptimizationRun): string {
  const id = (run.name ?? "").split("/").pop();
  return `New plan ${id}: expected cost ${fmt.eur(run.expected?.costEur)} over the horizon, against ${fmt.eur(run.baseline?.costEur)} with self-consumption alone.`;
}

export function PlanChart({
  org,
  site,
  edges,
  timeZone,
  measuredChannels,
  canPlan,
}: {
  org: string;
  site: string;
  edges: string[];
  timeZone?: string | undefined;
  measuredChannels: string[];
  canPlan: boolean;
}) {
  // A new run (the operator's "Re-plan now") reloads the plan in force.
  const [version, setVersion] = useState(0);
  const [planning, setPlanning] = useState(false);
  const [replanned, setReplanned] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const plans = useLoad(
    async () => (await Promise.all(edges.map((e) => activeSchedule(org, site, e)))).filter((p): p is ActiveSchedule => !!p),
    [org, site, edges.join(","), version],
    5 * 60_000,
  );
  async function replan() {
    setPlanning(true);
    setProblem(null);
    setReplanned(null);
    try {
      // No inputs: the service assembles them from the platform (the edges' devices, the measured state
      // of charge, prices, forecasts, tariffs) and says what is missing when it cannot.
      const { data, error, response } = await api.POST("/v1/organizations/{organization}/optimizationRuns:run", {
        params: { path: { organization: org } },
        body: { sites: [`organizations/${org}/sites/${site}`], requestId: crypto.randomUUID() },
      });
      if (!data) setProblem(`No new plan: ${describeError(error, response)}`);
      else if (data.state !== "OPTIMIZATION_RUN_STATE_SUCCEEDED") setProblem(`No new plan: ${data.failureMessage ?? "the run failed"}`);
      else {
        setReplanned(runText(data));
        setVersion((v) => v + 1);
      }
    } finally {
      setPlanning(false);
    }
  }
  const planned = plans.data ?? [];
  const assets = planned.flatMap((p) =>
    (p.schedules ?? []).map((s) => {
      const start = epoch(p.startTime);
      const step = seconds(p.step);
      const xs = (s.powerW ?? []).map((_, i) => start + i * step);
      // The optimizer counts battery power positive when charging; telemetry (and this chart, so the
      // plan lies on what was measured) positive when discharging.
      const sign = s.kind === "ASSET_KIND_BATTERY" ? -1 : 1;
      const asset = s.kind === "ASSET_KIND_GRID" ? "grid" : (s.asset ?? "asset").split("/").pop();
      const ys = (s.powerW ?? []).map((w) => (w === 0 ? 0 : sign * w));
      return { label: `${asset} plan`, table: [xs, ys] as ChartData, start, end: start + xs.length * step };
    }),
  );
  const from = Math.min(...assets.map((a) => a.start));
  const to = Math.max(...assets.map((a) => a.end));
  const battery = measuredChannels.filter((c) => roleOf(parseChannel(c)?.device ?? "") === "battery");
  const measured = useLoad(
    () =>
      assets.length && battery.length && from < Date.now() / 1000
        ? queryHistory(org, site, battery, new Date(from * 1000), new Date(Math.min(to, Date.now() / 1000) * 1000), intervalFor(to - from) || 60)
        : Promise.resolve([]),
    [org, site, from, to, battery.join(",")],
  );
  const tables = [
    ...assets.map((a) => a.table),
    ...(measured.data ?? []).map((s): ChartData => [(s.points ?? []).map((p) => epoch(p.time)), (s.points ?? []).map((p) => p.value ?? null)]),
  ];
  const labels = [...assets.map((a) => a.label), ...(measured.data ?? []).map((s) => `${parseChannel(s.channel)?.device ?? ""} measured`)];
  return (
    <section aria-labelledby="plan-title">
      <h2 id="plan-title">Optimizer plan</h2>
      {canPlan && (
        <p>
          <button type="button" onClick={() => void replan()} disabled={planning}>
            {planning ? "Planning…" : "Re-plan now"}
          </button>
        </p>
      )}
      {replanned && (
        <p role="status" class="meta small" data-replanned>
          {replanned}
        </p>
      )}
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {plans.error && <p role="alert" class="error">{plans.error}</p>}
      {plans.data && assets.length === 0 && <p>No plan in force at this site's edges.</p>}
      {assets.length > 0 && (
        <p class="meta small" data-plan-assets={assets.map((a) => a.label).join(",")}>
          Run {(planned[0]?.run ?? "").split("/").pop()}, {fmt.time(planned[0]?.startTime, timeZone)} to{" "}
          {fmt.time(planned[0]?.validUntilTime, timeZone)}; power in W (batteries positive discharging, grid positive importing, as measured).
        </p>
      )}
      {planned.map((p) => (
        <p
          key={p.edge}
          class={p.delivery?.state === "SCHEDULE_DELIVERY_STATE_REFUSED" ? "error small" : "meta small"}
          data-delivery={p.delivery?.state ?? ""}
        >
          Edge {(p.edge ?? "").split("/").pop()}: {deliveryText(p.delivery, timeZone)}
        </p>
      ))}
      {assets.length > 0 && (
        <Chart
          label={`The optimizer's plan against what was measured: ${labels.join(", ")}`}
          testId="plan"
          timeZone={timeZone}
          yLabel="W"
          series={labels.map((label, i) => ({
            label,
            stroke: colour(i),
            width: 1.5,
            ...(i < assets.length ? { paths: uPlot.paths.stepped!({ align: 1 }), points: { show: false } } : {}),
          }))}
          data={uPlot.join(tables)}
        />
      )}
    </section>
  );
}
