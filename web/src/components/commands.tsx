// Send a setpoint with confirmation and watch its lifecycle live (QUEUED -> DELIVERED -> RECEIVED ->
// EXECUTED, or the state and reason that ended it). Shown only to operators and admins; the API
// enforces the role anyway. Bad input is refused here in words, and what the API refuses (a value
// outside the device's limits) is shown in its own words.
import { useEffect, useState } from "preact/hooks";
import { api, describeError, type Schemas } from "../api";
import { openStream, type LinkState } from "../live";
import * as fmt from "../format";

type Command = Schemas["emma.command.v1.Command"];
type Watch = Schemas["emma.command.v1.WatchCommandResponse"];

export interface Target {
  edge: string;
  device: string;
  channel: string; // "<device>/SetActivePower", relative to the edge
}

const FINAL = new Set([
  "COMMAND_STATE_EXECUTED",
  "COMMAND_STATE_REJECTED_BY_EDGE",
  "COMMAND_STATE_FAILED",
  "COMMAND_STATE_CANCELLED",
]);

export function stateWord(state: string | undefined): string {
  return (state ?? "COMMAND_STATE_UNSPECIFIED").replace("COMMAND_STATE_", "").replace(/_/g, " ");
}

function parseSetpoint(raw: string): number | string {
  const text = raw.trim().replace(/\u2212/g, "-");
  if (!text) return "Enter a setpoint in watts.";
  const value = Number(text);
  if (!Number.isFinite(value)) return `"${raw.trim()}" is not a number; enter the setpoint in watts, for example -2000.`;
  return value;
}

export function CommandPanel({ org, site, targets, timeZone }: { org: string; site: string; targets: Target[]; timeZone?: string | undefined }) {
  const [target, setTarget] = useState(0);
  const [raw, setRaw] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [pending, setPending] = useState<{ target: Target; value: number } | null>(null);
  const [busy, setBusy] = useState(false);
  const [command, setCommand] = useState<Command | null>(null);
  const [link, setLink] = useState<LinkState | null>(null);

  useEffect(() => {
    if (!command?.name || FINAL.has(command.state ?? "")) return;
    return openStream<Watch>(`/v1/${command.name}:watch`, {
      onData: (m) => {
        if (m.command) setCommand(m.command);
        return FINAL.has(m.command?.state ?? "");
      },
      onState: (s) => setLink(s),
      reconnect: true,
    });
  }, [command?.name]);

  if (targets.length === 0) return <p>No device of this site takes a power setpoint.</p>;
  const chosen = targets[Math.min(target, targets.length - 1)]!;

  function review(event: Event) {
    event.preventDefault();
    const value = parseSetpoint(raw);
    if (typeof value === "string") {
      setProblem(value);
      return;
    }
    setProblem(null);
    setPending({ target: chosen, value });
  }

  async function send() {
    if (!pending) return;
    setBusy(true);
    try {
      const { edge, channel } = pending.target;
      const { data, error, response } = await api.POST(
        "/v1/organizations/{organization}/sites/{site}/edges/{edge}/commands",
        {
          params: { path: { organization: org, site, edge }, query: { requestId: crypto.randomUUID() } },
          body: { channel, value: pending.value },
        },
      );
      if (!data) {
        setProblem(`The command was refused: ${describeError(error, response)}`);
      } else {
        setCommand(data);
        setLink(null);
      }
    } catch (e) {
      setProblem(`The server could not be reached (${e instanceof Error ? e.message : String(e)}).`);
    } finally {
      setBusy(false);
      setPending(null);
    }
  }

  const state = command?.state;
  return (
    <div class="commands">
      <form class="setpoint" onSubmit={review} noValidate>
        <label>
          Device
          <select value={String(target)} onChange={(e) => setTarget(Number((e.currentTarget as HTMLSelectElement).value))}>
            {targets.map((t, i) => (
              <option key={`${t.edge}/${t.channel}`} value={String(i)}>
                {t.edge} › {t.channel}
              </option>
            ))}
          </select>
        </label>
        <label>
          Setpoint (W)
          <input
            name="setpoint"
            inputMode="decimal"
            value={raw}
            aria-describedby="setpoint-help"
            onInput={(e) => setRaw((e.currentTarget as HTMLInputElement).value)}
          />
        </label>
        <button type="submit" disabled={busy || pending !== null}>
          Send setpoint…
        </button>
        <p id="setpoint-help" class="small meta">
          Watts; for a battery positive discharges, negative charges.
        </p>
      </form>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {pending && (
        <div class="confirm" role="alertdialog" aria-labelledby="confirm-text">
          <p id="confirm-text">
            Send {fmt.number(pending.value, "W")} to {pending.target.device} on edge {pending.target.edge}?
          </p>
          <button type="button" onClick={() => void send()} disabled={busy}>
            Confirm
          </button>{" "}
          <button type="button" class="secondary" onClick={() => setPending(null)} disabled={busy}>
            Cancel
          </button>
        </div>
      )}
      {command && (
        <div class="lifecycle" aria-live="polite">
          <p>
            Command {fmt.number(command.value, "W")} to {command.channel}:{" "}
            <strong class={`cmd-state cmd-${stateWord(state).toLowerCase().replace(/ /g, "-")}`} data-state={state}>
              {stateWord(state)}
            </strong>
            {command.stateReason && <> ({command.stateReason})</>}
            {state === "COMMAND_STATE_EXECUTED" && command.appliedValue !== undefined && (
              <> · applied {fmt.number(command.appliedValue, "W")}</>
            )}
            {link === "reconnecting" && <span class="small"> · reconnecting to the live status…</span>}
          </p>
          <ol class="transitions">
            {(command.transitions ?? []).map((t, i) => (
              <li key={i}>
                {stateWord(t.toState)} {fmt.time(t.transitionTime, timeZone)}
                {(t.reason || t.message) && <span class="small"> — {[t.reason, t.message].filter(Boolean).join(": ")}</span>}
              </li>
            ))}
          </ol>
        </div>
      )}
    </div>
  );
}

/** A command by name, watched live until it is final (the alarms centre's recommended actions). */
export function WatchedCommand({ name, timeZone }: { name: string; timeZone?: string | undefined }) {
  const [command, setCommand] = useState<Command | null>(null);
  const [link, setLink] = useState<LinkState | null>(null);
  useEffect(
    () =>
      openStream<Watch>(`/v1/${name}:watch`, {
        onData: (m) => {
          if (m.command) setCommand(m.command);
          return FINAL.has(m.command?.state ?? "");
        },
        onState: setLink,
        reconnect: true,
      }),
    [name],
  );
  const state = command?.state;
  return (
    <p class="lifecycle small" aria-live="polite">
      Command {command ? `${fmt.number(command.value)} to ${command.channel}` : name.split("/").pop()}:{" "}
      <strong class={`cmd-state cmd-${stateWord(state).toLowerCase().replace(/ /g, "-")}`} data-state={state ?? ""}>
        {command ? stateWord(state) : "…"}
      </strong>
      {command?.stateReason && <> ({command.stateReason})</>}
      {command && state === "COMMAND_STATE_EXECUTED" && <> · {fmt.time(command.updateTime, timeZone)}</>}
      {link === "reconnecting" && <> · reconnecting to the live status…</>}
    </p>
  );
}
