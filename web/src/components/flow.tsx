// The living energy flow: PV, battery, grid and the home around the site bus, each line animated in the
// direction power flows and faster the more of it there is (still under prefers-reduced-motion).
import type { Flow } from "../energy";
import * as fmt from "../format";

interface Node {
  id: string;
  label: string;
  x: number;
  y: number;
  watts: number | undefined;
  // > 0 when power flows from this node into the bus.
  towardBus: number | undefined;
  detail: string;
}

const HUB = { x: 200, y: 120 };

function speed(watts: number): string {
  const kw = Math.abs(watts) / 1000;
  return `${Math.max(0.35, 2.4 - Math.log10(1 + kw) * 1.4).toFixed(2)}s`;
}

export function describeFlow(f: Flow): string {
  const parts: string[] = [];
  if (f.pvW !== undefined) parts.push(`PV produces ${fmt.power(Math.max(0, f.pvW))}`);
  if (f.batteryW !== undefined)
    parts.push(
      f.batteryW > 0
        ? `the battery discharges ${fmt.power(f.batteryW)}`
        : f.batteryW < 0
          ? `the battery charges ${fmt.power(-f.batteryW)}`
          : "the battery is idle",
    );
  if (f.gridW !== undefined)
    parts.push(f.gridW >= 0 ? `the site imports ${fmt.power(f.gridW)}` : `the site exports ${fmt.power(-f.gridW)}`);
  if (f.loadW !== undefined) parts.push(`the home uses ${fmt.power(f.loadW)}`);
  return parts.length ? parts.join(", ") + "." : "No power values yet.";
}

export function EnergyFlow({ flow }: { flow: Flow }) {
  const battery = flow.batteryW;
  const nodes: Node[] = [
    { id: "pv", label: "PV", x: 200, y: 28, watts: flow.pvW, towardBus: flow.pvW, detail: "producing" },
    {
      id: "grid",
      label: "Grid",
      x: 48,
      y: 120,
      watts: flow.gridW,
      towardBus: flow.gridW,
      detail: flow.gridW === undefined ? "" : flow.gridW >= 0 ? "importing" : "exporting",
    },
    {
      id: "load",
      label: flow.loadDerived ? "Home (derived)" : "Home",
      x: 352,
      y: 120,
      watts: flow.loadW,
      towardBus: flow.loadW === undefined ? undefined : -flow.loadW,
      detail: "using",
    },
    {
      id: "battery",
      label: "Battery",
      x: 200,
      y: 212,
      watts: battery,
      towardBus: battery,
      detail:
        (battery === undefined ? "" : battery > 0 ? "discharging" : battery < 0 ? "charging" : "idle") +
        (flow.socPct !== undefined ? ` · ${fmt.number(Math.round(flow.socPct))} %` : ""),
    },
  ];
  return (
    <figure class="flow-figure">
      <svg viewBox="0 0 400 240" class="flow" role="img" aria-label={`Energy flow: ${describeFlow(flow)}`}>
        {nodes.map((n) => {
          const w = n.towardBus;
          const moving = w !== undefined && Math.abs(w) >= 1;
          const cls = `flow-line ${moving ? (w! > 0 ? "in" : "out") : "idle"}`;
          return (
            <line
              key={`l-${n.id}`}
              class={cls}
              x1={n.x}
              y1={n.y}
              x2={HUB.x}
              y2={HUB.y}
              style={moving ? { animationDuration: speed(w!) } : undefined}
            />
          );
        })}
        <circle class="flow-hub" cx={HUB.x} cy={HUB.y} r={6} />
        {nodes.map((n) => (
          <g key={n.id} class={`flow-node node-${n.id}`} data-flow={n.id}>
            <circle cx={n.x} cy={n.y} r={24} />
            <text x={n.x} y={n.y - 3} text-anchor="middle" class="flow-label">
              {n.label.replace(" (derived)", "")}
            </text>
            <text x={n.x} y={n.y + 12} text-anchor="middle" class="flow-value" data-watts={n.watts ?? ""}>
              {n.watts === undefined ? "–" : fmt.power(Math.abs(n.watts))}
            </text>
          </g>
        ))}
      </svg>
      <figcaption>
        <dl class="flow-legend">
          {nodes.map((n) => (
            <div key={n.id} data-flow-value={n.id}>
              <dt>{n.label}</dt>
              <dd>
                {n.watts === undefined ? "no value" : fmt.power(n.id === "grid" || n.id === "battery" ? n.watts : Math.abs(n.watts))}
                {n.detail && n.watts !== undefined && <span class="small"> {n.detail}</span>}
              </dd>
            </div>
          ))}
        </dl>
      </figcaption>
    </figure>
  );
}
