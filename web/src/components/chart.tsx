// uPlot in a Preact component: canvas rendering keeps a 30-day chart fast, and times are drawn in the
// site's time zone. Dragging across the chart asks the owner for a finer range (onZoom) instead of
// only stretching the points already loaded.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export type ChartData = uPlot.AlignedData;

export interface ChartProps {
  label: string;
  series: uPlot.Series[];
  data: ChartData;
  timeZone?: string | undefined;
  bands?: uPlot.Band[];
  height?: number;
  yLabel?: string;
  onZoom?: (fromS: number, toS: number) => void;
  /** The x range shown (epoch seconds); unset: the data's own. */
  xRange?: [number, number] | undefined;
  testId?: string;
  /** Carried in the chart's User Timing marks' detail (the history's loaded interval, for the bench). */
  mark?: Record<string, unknown>;
}

export function cssVar(name: string, fallback: string): string {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

export function Chart({ label, series, data, timeZone, bands, height = 240, yLabel, onZoom, xRange, testId, mark }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const zoom = useRef(onZoom);
  zoom.current = onZoom;
  const range = useRef(xRange);
  range.current = xRange;
  const drawnDetail = useRef<Record<string, unknown>>({});
  const shape = series.map((s) => s.label).join("|") + (bands ? `#${bands.length}` : "") + (timeZone ?? "");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const fg = cssVar("--fg", "#1b1f23");
    const grid = cssVar("--line", "#d0d7de");
    const axis: uPlot.Axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const options: uPlot.Options = {
      width: Math.max(280, el.clientWidth),
      height,
      series: [{ label: "Time" }, ...series],
      // A fixed window when the owner gives one: a history with a few recent points still spans the
      // requested day, and a drag selects times inside it.
      scales: { x: { time: true, range: (_u, min, max) => range.current ?? [min, max] } },
      axes: [axis, { ...axis, label: yLabel, size: 60 }],
      cursor: { drag: { x: true, y: false, setScale: !onZoom } },
      legend: { live: true },
      hooks: {
        // User Timing marks (chart:<testId>:data, chart:<testId>:drawn, with the x span drawn): what
        // bench/dashboard.py reads to time a chart's render in the browser; a few bytes, no cost.
        draw: [
          (u) => {
            if (!testId) return;
            const xs = u.data[0] ?? [];
            const spanS = xs.length > 1 ? (xs[xs.length - 1] ?? 0) - (xs[0] ?? 0) : 0;
            performance.clearMarks(`chart:${testId}:drawn`); // only the latest: a long-open page keeps none
            performance.mark(`chart:${testId}:drawn`, { detail: { ...drawnDetail.current, points: xs.length, spanS } });
          },
        ],
        setSelect: [
          (u) => {
            if (!zoom.current || u.select.width < 4) return;
            const from = u.posToVal(u.select.left, "x");
            const to = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            zoom.current(from, to);
          },
        ],
      },
    };
    if (bands) options.bands = bands;
    if (timeZone) options.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), timeZone);
    const u = new uPlot(options, data, el);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(280, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [shape, height]);

  useEffect(() => {
    if (!plot.current) return;
    if (testId) {
      performance.clearMarks(`chart:${testId}:data`);
      drawnDetail.current = mark ?? {};
      performance.mark(`chart:${testId}:data`, { detail: { ...drawnDetail.current, points: data[0]?.length ?? 0 } });
    }
    plot.current.setData(data);
  }, [data, xRange?.[0], xRange?.[1]]);

  return <div class="chart" ref={box} role="img" aria-label={label} data-chart={testId} />;
}

export { uPlot };
