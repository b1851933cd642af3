// Fleet dispatch: one action (charge, discharge, hold) to every edge of the organization, confirmed
// first, then followed until every child command is final, with each edge's result (the command's
// state and reason, or why the edge got no command at all).
import { useEffect, useState } from "preact/hooks";
import { api, describeError, type Schemas } from "../api";
import * as fmt from "../format";
import { stateWord } from "./commands";

type Dispatch = Schemas["emma.command.v1.FleetDispatch"];
type Command = Schemas["emma.command.v1.Command"];
type Action = "FLEET_ACTION_CHARGE" | "FLEET_ACTION_DISCHARGE" | "FLEET_ACTION_HOLD";

const ACTIONS: [Action, string][] = [
  ["FLEET_ACTION_DISCHARGE", "Discharge"],
  ["FLEET_ACTION_CHARGE", "Charge"],
  ["FLEET_ACTION_HOLD", "Hold at 0 W"],
];

function edgeOf(command: string): string {
  return command.split("/commands/")[0] ?? command;
}

export function FleetDispatchPanel({ org }: { org: string }) {
  const [action, setAction] = useState<Action>("FLEET_ACTION_DISCHARGE");
  const [raw, setRaw] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [pending, setPending] = useState<{ action: Action; kw: number } | null>(null);
  const [dispatch, setDispatch] = useState<Dispatch | null>(null);
  const [children, setChildren] = useState<Command[]>([]);

  // Followed by polling: a dispatch has no watch route, and its children settle within seconds.
  useEffect(() => {
    const name = dispatch?.name;
    if (!name) return;
    let live = true;
    let timer: number | undefined;
    const tick = async () => {
      const id = name.split("/").pop() ?? "";
      const got = await api.GET("/v1/organizations/{organization}/fleetDispatches/{fleet_dispatch}", {
        params: { path: { organization: org, fleet_dispatch: id } },
      });
      if (!live) return;
      if (got.data) setDispatch(got.data);
      const names = got.data?.commands ?? [];
      const commands = await Promise.all(
        names.map(async (c) => {
          const r = await fetchCommand(c);
          return r ?? { name: c };
        }),
      );
      if (!live) return;
      setChildren(commands);
      const settled = (got.data?.status?.pendingCount ?? 1) === 0 && commands.every((c) => isFinal(c.state));
      if (!settled) timer = window.setTimeout(() => void tick(), 700);
    };
    void tick();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [dispatch?.name]);

  function review(event: Event) {
    event.preventDefault();
    if (action === "FLEET_ACTION_HOLD") {
      setProblem(null);
      setPending({ action, kw: 0 });
      return;
    }
    const text = raw.trim();
    const kw = Number(text);
    if (!text) setProblem("Enter the power per edge in kW.");
    else if (!Number.isFinite(kw)) setProblem(`"${text}" is not a number; enter the power per edge in kW, for example 2.5.`);
    else if (kw <= 0) setProblem("The power per edge must be more than 0 kW; choose charge or discharge for the direction.");
    else {
      setProblem(null);
      setPending({ action, kw });
    }
  }

  async function send() {
    if (!pending) return;
    const { data, error, response } = await api.POST("/v1/organizations/{organization}/fleetDispatches", {
      params: { path: { organization: org }, query: { requestId: crypto.randomUUID() } },
      body: { wholeOrganization: true, action: pending.action, powerKw: pending.kw },
    });
    setPending(null);
    if (!data) setProblem(`The dispatch was refused: ${describeError(error, response)}`);
    else {
      setChildren([]);
      setDispatch(data);
    }
  }

  const label = ACTIONS.find(([a]) => a === pending?.action)?.[1] ?? "";
  const skipped = Object.entries(dispatch?.status?.skippedEdges ?? {});
  return (
    <div class="dispatch">
      <form class="setpoint" onSubmit={review} noValidate>
        <label>
          Action
          <select value={action} onChange={(e) => setAction((e.currentTarget as HTMLSelectElement).value as Action)}>
            {ACTIONS.map(([a, text]) => (
              <option key={a} value={a}>
                {text}
              </option>
            ))}
          </select>
        </label>
        <label>
          Power per edge (kW)
          <input inputMode="decimal" value={raw} disabled={action === "FLEET_ACTION_HOLD"} onInput={(e) => setRaw((e.currentTarget as HTMLInputElement).value)} />
        </label>
        <button type="submit" disabled={pending !== null}>
          Dispatch to the fleet…
        </button>
      </form>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {pending && (
        <div class="confirm" role="alertdialog" aria-labelledby="dispatch-confirm">
          <p id="dispatch-confirm">
            {label}
            {pending.action !== "FLEET_ACTION_HOLD" && ` ${fmt.number(pending.kw, "kW")} per edge`} at every edge of the organization?
          </p>
          <button type="button" onClick={() => void send()}>
            Confirm dispatch
          </button>{" "}
          <button type="button" class="secondary" onClick={() => setPending(null)}>
            Cancel
          </button>
        </div>
      )}
      {dispatch && (
        <div class="dispatch-result" aria-live="polite">
          <p data-dispatch-pending={dispatch.status?.pendingCount ?? ""}>
            {dispatch.status?.totalCount ?? 0} command(s): {dispatch.status?.executedCount ?? 0} executed,{" "}
            {dispatch.status?.pendingCount ?? 0} pending, {dispatch.status?.rejectedCount ?? 0} rejected,{" "}
            {dispatch.status?.failedCount ?? 0} failed; {skipped.length} edge(s) skipped.
          </p>
          <table class="dispatch-edges">
            <thead>
              <tr>
                <th scope="col">Edge</th>
                <th scope="col">Result</th>
              </tr>
            </thead>
            <tbody>
              {children.map((c) => (
                <tr key={c.name} data-edge={edgeOf(c.name ?? "")}>
                  <th scope="row">{edgeOf(c.name ?? "").replace(`organizations/${org}/sites/`, "")}</th>
                  <td>
                    {stateWord(c.state)}
                    {c.channel && ` · ${c.channel} ${fmt.number(c.value, "W")}`}
                    {c.stateReason && ` (${c.stateReason})`}
                  </td>
                </tr>
              ))}
              {skipped.map(([edge, why]) => (
                <tr key={edge} data-edge={edge}>
                  <th scope="row">{edge.replace(`organizations/${org}/sites/`, "")}</th>
                  <td>skipped: {why}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function isFinal(state: string | undefined): boolean {
  return ["COMMAND_STATE_EXECUTED", "COMMAND_STATE_REJECTED_BY_EDGE", "COMMAND_STATE_FAILED", "COMMAND_STATE_CANCELLED"].includes(state ?? "");
}

async function fetchCommand(name: string): Promise<Command | undefined> {
  const m = name.match(/^organizations\/([^/]+)\/sites\/([^/]+)\/edges\/([^/]+)\/commands\/([^/]+)$/);
  if (!m) return undefined;
  const { data } = await api.GET("/v1/organizations/{organization}/sites/{site}/edges/{edge}/commands/{command}", {
    params: { path: { organization: m[1]!, site: m[2]!, edge: m[3]!, command: m[4]! } },
  });
  return data;
}
